"""PostgreSQL for MLflow's backend store, when ``REFINERY_MLFLOW_BACKEND=postgresql``.

A server of its own (Debian's ``postgresql`` package; ``make setup`` records where its
binaries are) with its data under ``var/postgres``: ``initdb`` on first start, then the
``mlflow`` database. Trust authentication on loopback only; another host's database is
``REFINERY_MLFLOW_BACKEND_URI`` (the stack then starts none). PostgreSQL refuses to run as
root: under root the server runs as the ``postgres`` system user, which must be able to
reach ``var/postgres``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

from refinery.common.exceptions import ConfigError, ProcessError
from refinery.common.settings import Settings
from refinery.stack.process import ManagedProcess

DATABASE = "mlflow"
USER = "refinery"
_SYSTEM_USER = "postgres"


def postgres_uri(settings: Settings) -> str:
    return f"postgresql://{USER}@{settings.postgres_host}:{settings.postgres_port}/{DATABASE}"


def _bin(settings: Settings, name: str) -> str:
    folder = settings.postgres_bin_dir
    if folder is None or not (folder / name).exists():
        raise ConfigError(
            f"REFINERY_POSTGRES_BIN_DIR={folder} has no {name}; run `make setup` (it finds "
            "Debian's postgresql binaries, installing the package if missing)"
        )
    return str(folder / name)


def _as_server_user() -> list[str]:
    """The command prefix that drops root for the ``postgres`` user; nothing otherwise."""
    if os.geteuid() != 0:
        return []
    entry = pwd.getpwnam(_SYSTEM_USER)
    return ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups"]


def _run(argv: list[str], what: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise ProcessError(f"postgres: {what} failed: {(done.stderr or done.stdout)[-1500:]}")


def _prepare(settings: Settings, data: Path) -> None:
    """``initdb`` once; under root, hand the folder to the server's user."""
    if (data / "PG_VERSION").exists():
        return
    staging = data.with_name(data.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True, mode=0o700)
    prefix = _as_server_user()
    if prefix:
        entry = pwd.getpwnam(_SYSTEM_USER)
        os.chown(staging, entry.pw_uid, entry.pw_gid)
    _run(
        [
            *prefix,
            _bin(settings, "initdb"),
            "-D",
            str(staging),
            "-U",
            USER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-instructions",
        ],
        "initdb",
    )
    staging.rename(data)


def _client(settings: Settings, tool: str) -> list[str]:
    """``tool`` (psql, createdb) aimed at this server as the stack's user."""
    host, port = settings.postgres_host, str(settings.postgres_port)
    return [_bin(settings, tool), "-h", host, "-p", port, "-U", USER]


def query(settings: Settings, sql: str, database: str = DATABASE) -> str:
    """One value (or rows, one per line) that ``sql`` selects; ProcessError if it fails."""
    done = subprocess.run(
        [*_client(settings, "psql"), "-d", database, "-tAc", sql],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0:
        raise ProcessError(f"postgres: {sql!r} failed: {done.stderr[-500:]}")
    return done.stdout.strip()


def _healthy(settings: Settings) -> bool:
    """Up, with the ``mlflow`` database (made here the first time)."""
    try:
        found = query(
            settings, f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'", "postgres"
        )
    except ProcessError:
        return False
    if found != "1":
        _run([*_client(settings, "createdb"), DATABASE], "createdb")
    return True


def postgres_process(settings: Settings) -> ManagedProcess:
    """The server on ``postgres_host:postgres_port``; ready once the ``mlflow`` database is."""
    data = (settings.var_dir / "postgres" / "data").resolve()
    argv: list[str] = []
    if settings.postgres_bin_dir is not None:  # a handle that only stops needs no binaries
        argv = [
            *_as_server_user(),
            _bin(settings, "postgres"),
            "-D",
            str(data),
            "-p",
            str(settings.postgres_port),
            "-c",
            f"listen_addresses={settings.postgres_host}",
            "-c",
            f"unix_socket_directories={data}",
        ]
    return ManagedProcess(
        name="postgres",
        argv=argv,
        run_dir=settings.run_dir,
        log_dir=settings.log_dir,
        ports={"postgres": settings.postgres_port},
        health=lambda: _healthy(settings),
        prepare=lambda: _prepare(settings, data),
        startup_timeout_s=60,
    )
