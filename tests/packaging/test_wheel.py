"""``pip install`` of Refinery gives a working ``refinery``: the wheel built from this
checkout, installed into a fresh venv with the locked dependencies, run from a folder
outside the clone with nothing of the checkout on its path and no REFINERY_* settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from refinery.common.events import SCHEMA_TYPES, schema_file_name
from refinery.common.settings import REPO_ROOT
from tests.toolchain import tool

# The module each process starts from (refinery.stack.* names them).
ENTRY_MODULES = [
    "refinery.cli.main",
    "refinery.inference.app",
    "refinery.monitor.app",
    "refinery.retrainer.service",
    "refinery.stack.supervisor",
    "refinery.demo.loop",
]


@dataclass(frozen=True)
class Installed:
    wheel: Path
    bin: Path
    home: Path

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": f"{self.bin}:{os.environ['PATH']}",
            "HOME": str(self.home),
            "XDG_DATA_HOME": str(self.home / "data"),
        }
        return subprocess.run(
            argv, cwd=self.home, env=env, capture_output=True, text=True, timeout=300, check=False
        )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    uv = str(tool("UV"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [uv, "build", "-q", "--wheel", "--no-build-isolation", "-p", sys.executable, "-o", out],
        cwd=REPO_ROOT,
        check=True,
    )
    (wheel,) = out.glob("refinery-*.whl")
    venv = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run([uv, "venv", "-q", "-p", sys.executable, venv], check=True)
    python = venv / "bin" / "python"
    locked = REPO_ROOT / "requirements.lock"
    subprocess.run([uv, "pip", "install", "-q", "-p", python, "-r", locked, wheel], check=True)
    return Installed(wheel, venv / "bin", tmp_path_factory.mktemp("home"))


def test_the_wheel_holds_one_package_and_its_data(installed: Installed) -> None:
    names = zipfile.ZipFile(installed.wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    print(f"{installed.wheel.name}: {installed.wheel.stat().st_size:,} bytes, {len(names)} files")
    assert tops == {"refinery", "refinery-0.1.0.dist-info"}
    for name in SCHEMA_TYPES:
        assert f"refinery/data/schemas/{schema_file_name(name)}" in names
    assert "refinery/data/refinery.yaml" in names
    assert {"refinery/data/tasks/reply.yaml", "refinery/data/tasks/reply-chat.yaml"} <= set(names)


def test_the_installed_command_runs_outside_the_clone(installed: Installed) -> None:
    helped = installed.run("refinery", "--help")
    assert helped.returncode == 0, helped.stderr
    assert "demo" in helped.stdout and "status" in helped.stdout
    checked = installed.run("refinery", "schemas")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "schemas match the models" in checked.stdout


def test_every_entry_module_imports_from_the_install(installed: Installed) -> None:
    probe = f"""
import importlib, json
modules = [importlib.import_module(m) for m in {ENTRY_MODULES!r}]
from refinery.common.settings import IN_CHECKOUT, get_settings
from refinery.common.task import load_task
settings = get_settings()
print(json.dumps({{
    "files": [m.__file__ for m in modules],
    "in_checkout": IN_CHECKOUT,
    "var_dir": str(settings.var_dir),
    "task_file": str(settings.task_file),
    "task": load_task(settings.task_file).task.name,
}}))
"""
    ran = installed.run("python", "-c", probe)
    assert ran.returncode == 0, ran.stderr
    seen = json.loads(ran.stdout.strip().splitlines()[-1])
    site = str(installed.bin.parent)
    assert all(f.startswith(site) for f in seen["files"]), seen["files"]
    assert seen["in_checkout"] is False
    # What it writes goes to the user's data folder, the example task comes from the wheel.
    assert seen["var_dir"] == str(installed.home / "data" / "refinery")
    assert seen["task_file"].startswith(site)
    assert seen["task"] == "support-triage"
