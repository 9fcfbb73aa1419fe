"""A detached process with a pid file, a log file and a health check."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from refinery.common.exceptions import ProcessError
from refinery.stack.ports import describe_holders, ensure_free

log = logging.getLogger(__name__)

# Every child this Python process started, by pid, until its exit status is collected: a
# handle may be dropped while its process runs on (a fixture's Stack, a command's), and
# whichever handle stops that process later reaps it here, leaving no zombie, nor an
# unreaped Popen for the garbage collector to warn about.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _reap_child(pid: int | None, timeout_s: float | None) -> None:
    """Collect the exit status of our child ``pid``: wait up to ``timeout_s``, or with
    None only if it has ended already. Not ours (another command's): nothing to do."""
    child = _CHILDREN.get(pid) if pid is not None else None
    if child is None:
        return
    if timeout_s is not None:
        child.wait(timeout=timeout_s)
    elif child.poll() is None:
        return
    del _CHILDREN[child.pid]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) is not alive for our purposes.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def _group_members(pgid: int) -> list[int]:
    """Live processes of process group ``pgid``: a leader's children outlive a SIGKILL of
    the leader alone (vLLM's engine core and workers did), and still hold its ports."""
    members = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(proc.name))
    return members


@dataclass
class ManagedProcess:
    """One process of the stack. It runs in its own session so ``stop`` ends its children too.

    ``argv`` may be empty for a handle that only checks or stops a running process
    (``refinery down`` does not need to know which model vLLM was started with).
    """

    name: str
    argv: list[str]
    run_dir: Path
    log_dir: Path
    health: Callable[[], bool]
    env: dict[str, str] = field(default_factory=dict)
    # What it listens on (by a name saying whose), checked free before it starts.
    ports: dict[str, int] = field(default_factory=dict)
    cwd: Path | None = None
    startup_timeout_s: float = 120.0
    #: run before each start (after the port check): a data folder to initialise, say
    prepare: Callable[[], None] | None = None
    stop_timeout_s: float = 30.0
    # The Popen we started, kept so it can be reaped (and Python does not warn about it).
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    #: whether the last stop() had to SIGKILL (the process ignored or outlasted SIGTERM)
    last_stop_forced: bool = field(default=False, init=False)

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    def _recorded_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def pid(self) -> int | None:
        """The pid of the running process, or None (a stale pid file is removed unless the
        leader's process group lives on: ``stop`` still needs it to end those)."""
        pid = self._recorded_pid()
        if pid is None:
            return None
        if _alive(pid):
            return pid
        if not _group_members(pid):
            self.pid_file.unlink(missing_ok=True)
        return None

    def is_healthy(self) -> bool:
        try:
            return self.health()
        except Exception:  # a health probe that raises means "not yet"
            return False

    def start(self) -> bool:
        """Start unless already running; wait until healthy. Returns True if it started it."""
        started = self.spawn()
        self.wait_healthy()
        return started

    def spawn(self) -> bool:
        """Start unless already running, without waiting for health (for peers that must
        come up together, like a KRaft quorum). Returns True if it started it."""
        if self.pid() is not None:
            return False
        for pid in list(_CHILDREN):  # ours that ended on their own: collect their status
            _reap_child(pid, None)
        self._proc = None
        if not self.argv:
            raise ProcessError(f"{self.name}: no command to start it with")
        self._end_orphans()
        ensure_free(self.name, self.ports)
        if self.prepare is not None:
            self.prepare()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as out:
            out.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {self.name}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
                cwd=self.cwd,
                start_new_session=True,
            )
        self._proc = _CHILDREN[proc.pid] = proc
        self.pid_file.write_text(f"{proc.pid}\n")
        log.info("%s: started pid %d, log %s", self.name, proc.pid, self.log_file)
        return True

    def wait_healthy(self) -> None:
        """Block until the health check passes; fail early if the process we started exits."""
        proc = self._proc
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.is_healthy():
                return
            if proc is not None and proc.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise ProcessError(
                    f"{self.name} exited with code {proc.returncode} during start-up"
                    f"{self._bind_conflicts()}; last lines of {self.log_file}:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.5)
        raise ProcessError(
            f"{self.name} not healthy after {self.startup_timeout_s:.0f}s; "
            f"last lines of {self.log_file}:\n{self.log_tail()}"
        )

    def _bind_conflicts(self) -> str:
        """For a start-up that failed on a taken port: which port, and who holds it."""
        if "Address already in use" not in self.log_tail(200):
            return ""
        busy = [
            f"{port} ({what}) held by {describe_holders(port)}" for what, port in self.ports.items()
        ]
        return " (address already in use: " + "; ".join(busy) + ")" if busy else ""

    def _group_running(self, pgid: int) -> bool:
        return _alive(pgid) or bool(_group_members(pgid))

    def stop(self) -> bool:
        """SIGTERM the process group, SIGKILL it after ``stop_timeout_s``; children whose
        leader already died are ended too. Returns True if anything of it was running."""
        pgid = self._recorded_pid()
        if pgid is None or not self._group_running(pgid):
            self.pid_file.unlink(missing_ok=True)
            # Ended by another stop (another handle's, another command's): reaped here.
            _reap_child(pgid, None)
            if self._proc is not None and self._proc.poll() is not None:
                _reap_child(self._proc.pid, None)
                self._proc = None
            return False
        self._signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        while time.monotonic() < deadline and self._group_running(pgid):
            time.sleep(0.2)
        self.last_stop_forced = self._group_running(pgid)
        if self.last_stop_forced:
            log.warning("%s: no exit after SIGTERM, killing", self.name)
            self._kill_group(pgid)
        self._reap(pgid)
        self.pid_file.unlink(missing_ok=True)
        return True

    def kill(self) -> None:
        """SIGKILL the whole group at once: the crash a fault test wants."""
        pgid = self._recorded_pid()
        if pgid is not None:
            self._kill_group(pgid)
            self._reap(pgid)
            self.pid_file.unlink(missing_ok=True)

    def kill_leader(self) -> None:
        """SIGKILL the leader alone, as an OOM killer or ``kill -9 PID`` does: its children
        live on, and only a group-wide stop or restart ends them (for fault tests)."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.05)
            self._reap(pid)

    def _end_orphans(self) -> None:
        """Before a start: end what is left of the last instance's group (ports, memory)."""
        pgid = self._recorded_pid()
        if pgid is not None and not _alive(pgid) and _group_members(pgid):
            log.warning("%s: ending orphans of pid %d before starting", self.name, pgid)
            self._kill_group(pgid)

    def _kill_group(self, pgid: int) -> None:
        self._signal_group(pgid, signal.SIGKILL)
        deadline = time.monotonic() + self.stop_timeout_s
        while self._group_running(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def _reap(self, pid: int) -> None:
        """Collect ``pid`` (stopped by us) and this handle's own child, if another one."""
        own = self._proc.pid if self._proc is not None else pid
        for child in {pid, own}:
            _reap_child(child, self.stop_timeout_s)
        self._proc = None

    @staticmethod
    def _signal_group(pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def module_process(
    name: str,
    module: str,
    ready: str,
    *,
    run_dir: Path,
    log_dir: Path,
    env: dict[str, str],
    startup_timeout_s: float = 60,
    stop_timeout_s: float = 10,
) -> ManagedProcess:
    """``python -m module``, healthy once it logged ``ready`` since its last start: the
    processes without a port of their own (the retrainer, the deployer, the supervisor)."""
    proc = ManagedProcess(
        name=name,
        argv=[sys.executable, "-m", module],
        run_dir=run_dir,
        log_dir=log_dir,
        health=lambda: False,
        env=env,
        startup_timeout_s=startup_timeout_s,
        stop_timeout_s=stop_timeout_s,
    )
    proc.health = lambda: logged_since_last_start(proc, ready)
    return proc


def logged_since_last_start(proc: ManagedProcess, line: str) -> bool:
    """Health for processes without a port (faust without its web server, the retrainer):
    ``line`` in the log since the last start (each start writes "--- <time> starting")."""
    try:
        text = proc.log_file.read_text(errors="replace")
    except FileNotFoundError:
        return False
    return line in text[text.rfind("\n--- ") :]
