"""The MLflow tracking + registry server: SQLite or PostgreSQL, artifacts served over HTTP.

Clients (the retrainer, the gateway, each vLLM replica) read and write artifacts through the
server (``mlflow-artifacts:/``), never its disk: the destination behind it is a folder here
or, by ``REFINERY_MLFLOW_ARTIFACTS_DESTINATION``, an object store (``s3://bucket/path``, with
the usual ``AWS_*`` variables and boto3 in the server's environment).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import httpx

from refinery.common.settings import Settings
from refinery.stack.postgres import postgres_uri
from refinery.stack.process import ManagedProcess


def mlflow_healthy(url: str) -> bool:
    return httpx.get(f"{url}/health", timeout=2.0).status_code == 200


def backend_store_uri(settings: Settings, root: Path) -> str:
    """The database MLflow keeps runs and the registry in (see the settings' mlflow_backend)."""
    if settings.mlflow_backend_uri is not None:
        return settings.mlflow_backend_uri.get_secret_value()
    if settings.mlflow_backend == "postgresql":
        return postgres_uri(settings)
    return f"sqlite:///{root / 'mlflow.db'}"


def mlflow_process(settings: Settings, data_dir: Path | None = None) -> ManagedProcess:
    """``mlflow server`` with its artifacts (and a SQLite database) under ``data_dir``
    (var/mlflow). Migrations run first on every start: ``mlflow db upgrade`` gives an empty
    database the schema and an older one the current schema (the server refuses old ones)."""
    root = (data_dir or settings.var_dir / "mlflow").resolve()
    root.mkdir(parents=True, exist_ok=True)
    url = f"http://{settings.mlflow_host}:{settings.mlflow_port}"
    mlflow = [sys.executable, "-m", "mlflow"]
    database = backend_store_uri(settings, root)
    return ManagedProcess(
        name="mlflow",
        argv=[
            "sh",
            "-c",
            # $0 is the database: its password (if any) stays out of the script text.
            f'{shlex.join(mlflow)} db upgrade "$0" >/dev/null && exec "$@"',
            database,
            *mlflow,
            "server",
            "--backend-store-uri",
            database,
            "--serve-artifacts",
            "--artifacts-destination",
            settings.mlflow_artifacts_destination or str(root / "artifacts"),
            "--host",
            settings.mlflow_host,
            "--port",
            str(settings.mlflow_port),
            "--workers",
            "1",
        ],
        run_dir=settings.run_dir,
        log_dir=settings.log_dir,
        ports={"mlflow": settings.mlflow_port},
        health=lambda: mlflow_healthy(url),
        # MLflow's job runner (huey workers for GenAI jobs) is unused here and costs
        # five extra processes on a two-core machine.
        env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        startup_timeout_s=120,
    )
