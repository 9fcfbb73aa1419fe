"""The inference gateway under uvicorn, and the local secrets it needs."""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import httpx

from refinery.common.settings import Settings
from refinery.stack.ports import replica_name
from refinery.stack.process import ManagedProcess


def _write_secret(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(value + "\n")


def ensure_local_secrets(settings: Settings) -> Path | None:
    """Create the signing key, and a local admin API key when no keys are configured.

    Returns the admin key's path when there is one (for `refinery up` to print).
    """
    signing = settings.signing_key_path
    if settings.signing_secret is None and not signing.exists():
        _write_secret(signing, secrets.token_urlsafe(32))
    admin = settings.admin_key_path
    configured = settings.api_keys is not None or settings.api_keys_path.exists()
    if not configured and not settings.auth_disabled and not admin.exists():
        _write_secret(admin, "rk-" + secrets.token_urlsafe(32))
    return admin if admin.exists() else None


def gateway_healthy(url: str) -> bool:
    return httpx.get(f"{url}/healthz", timeout=2.0).status_code == 200


def gateway_process(settings: Settings, replica: int = 0) -> ManagedProcess:
    """Gateway ``replica`` (0-based) on ``gateway_port + replica``; each follows the model
    events and balances over every vLLM replica by itself, so any number run side by side
    (behind a load balancer: infra/nginx)."""
    name, port = replica_name("gateway", replica), settings.gateway_port + replica
    url = f"http://{settings.gateway_host}:{port}"
    return ManagedProcess(
        name=name,
        argv=[
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "refinery.inference.app:create_app",
            "--host",
            settings.gateway_host,
            "--port",
            str(port),
            "--no-access-log",
            "--timeout-graceful-shutdown",
            "30",
            # Clients keep idle connections about 5 s (httpx, the openai client): a server
            # closing them after the same 5 s (uvicorn's default) races their next request
            # on it, which then fails ("Connection error."). Longer here: clients close first.
            "--timeout-keep-alive",
            "75",
        ],
        run_dir=settings.run_dir,
        log_dir=settings.log_dir,
        ports={name: port},
        health=lambda: gateway_healthy(url),
        # Its own port (the outbox file and metrics are per port), the rest shared.
        env={**settings.process_env(), "REFINERY_GATEWAY_PORT": str(port)},
        startup_timeout_s=120,
    )
