"""The inference gateway under uvicorn, and the local secrets it needs."""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import httpx

from refinery.common.settings import Settings
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


def gateway_process(settings: Settings) -> ManagedProcess:
    return ManagedProcess(
        name="gateway",
        argv=[
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "refinery.inference.app:create_app",
            "--host",
            settings.gateway_host,
            "--port",
            str(settings.gateway_port),
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
        ports={"gateway": settings.gateway_port},
        health=lambda: gateway_healthy(settings.gateway_url),
        env=settings.process_env(),
        startup_timeout_s=120,
    )
