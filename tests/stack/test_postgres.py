"""MLflow on PostgreSQL (REFINERY_MLFLOW_BACKEND=postgresql): the stack starts a real server
(Debian's package), MLflow's schema is migrated in at start, and the registry outlives a
restart of both."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from refinery.common.registry import CHAMPION, ModelRegistry
from refinery.common.settings import Settings
from refinery.stack.postgres import query
from refinery.stack.stack import Stack
from tests.conftest import _test_settings
from tests.ports import POSTGRES, ports


@pytest.fixture
def pg_settings() -> Iterator[Settings]:
    # Under root the server runs as the postgres user: its folder must be reachable by it
    # (pytest's own temp folders are private to root).
    var = Path(tempfile.mkdtemp(prefix="refinery-pg-"))
    var.chmod(0o755)
    yield _test_settings(var).model_copy(update={**ports(POSTGRES), "mlflow_backend": "postgresql"})
    shutil.rmtree(var, ignore_errors=True)


def test_the_registry_lives_in_postgresql_and_outlives_a_restart(
    pg_settings: Settings, tmp_path: Path
) -> None:
    stack = Stack(pg_settings)
    try:
        statuses = {s.name: s.healthy for s in stack.up(("mlflow",))}
        assert statuses["postgres"] and statuses["mlflow"], statuses

        mlflow.set_tracking_uri(pg_settings.mlflow_uri)
        mlflow.set_experiment("pg-test")
        (tmp_path / "weights.txt").write_text("not a model\n")
        with mlflow.start_run() as run:
            mlflow.log_artifact(str(tmp_path / "weights.txt"), "model")
        registry = ModelRegistry(pg_settings)
        info = registry.register(
            f"{run.info.artifact_uri}/model", run.info.run_id, {"kind": "base"}
        )
        registry.set_alias(CHAMPION, info.version)

        # In PostgreSQL's own tables, with the schema version migrations leave behind.
        model = pg_settings.registered_model
        assert query(pg_settings, "SELECT name FROM registered_models") == model
        assert query(pg_settings, "SELECT alias FROM registered_model_aliases") == CHAMPION
        assert query(pg_settings, "SELECT count(*) FROM alembic_version") == "1"

        assert stack.down(("mlflow",)) == ["mlflow", "postgres"]  # clients before the server
        stack.up(("mlflow",))
        champion = ModelRegistry(pg_settings).champion()
        assert champion is not None and champion.version == info.version
        got = mlflow.artifacts.download_artifacts(
            artifact_uri=champion.source, dst_path=str(tmp_path / "back")
        )
        assert (Path(got) / "weights.txt").read_text() == "not a model\n"
    finally:
        stack.down(("mlflow",))
