"""Session fixtures: the real stack (Kafka, MLflow, vLLM) on test ports under a temp dir.

Nothing here is a fake: the fixtures start the same processes ``refinery up`` starts,
through the same code, and stop them at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from refinery.common.settings import REPO_ROOT, Settings
from refinery.stack.stack import Stack
from tests.ports import SESSION, ports

TEST_TASK = REPO_ROOT / "tests" / "data" / "task-small.yaml"
API_KEYS = {
    "admin": "test-admin-key",
    "inference": "test-inference-key",
    "feedback": "test-feedback-key",
}
# A key of another app (tenant): it may rate only the answers its own tenant got.
OTHER_TENANT_KEY = "test-shop-2-key:inference+feedback:shop-2"


def _test_settings(var_dir: Path) -> Settings:
    # Ports away from the defaults, so a developer's running stack is left alone.
    return Settings(
        var_dir=var_dir,
        task_file=TEST_TASK,
        **ports(SESSION),
        vllm_max_model_len=256,
        api_keys=SecretStr(
            ",".join([*(f"{key}:{scope}" for scope, key in API_KEYS.items()), OTHER_TENANT_KEY])
        ),
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a subprocess (the CLI) see the same settings."""
    return {**os.environ, **settings.process_env()}


def run_cli(
    settings: Settings, *args: str, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "refinery.cli", *args],
        env={**settings_env(settings), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return _test_settings(tmp_path_factory.mktemp("var"))


@pytest.fixture(scope="session")
def stack(stack_settings: Settings) -> Iterator[Stack]:
    """One Stack for the session: each fixture below starts more of it; all stop at the end."""
    stack = Stack(stack_settings)
    yield stack
    stack.down()


@pytest.fixture(scope="session")
def kafka_stack(stack: Stack) -> Settings:
    """Kafka (one KRaft node) with every Refinery topic created."""
    stack.up(("kafka",))
    return stack.settings


@pytest.fixture(scope="session")
def mlflow_stack(stack: Stack, kafka_stack: Settings) -> Settings:
    stack.up(("mlflow",))
    return stack.settings


@pytest.fixture(scope="session")
def bootstrapped(mlflow_stack: Settings) -> Settings:
    """Version 1 registered by the real CLI (``refinery bootstrap``) as champion."""
    done = run_cli(mlflow_stack, "bootstrap")
    assert done.returncode == 0, done.stderr[-3000:]
    return mlflow_stack


@pytest.fixture(scope="session")
def full_stack(stack: Stack, bootstrapped: Settings) -> Settings:
    """Kafka, MLflow, vLLM serving the champion and the gateway, as ``refinery up`` does."""
    stack.up()
    return stack.settings
