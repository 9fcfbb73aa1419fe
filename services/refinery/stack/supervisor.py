"""The supervisor: restarts any process of the stack that died, with backoff.

``refinery up`` starts it (``python -m refinery.stack.supervisor``) after the stack. It
watches the components ``refinery up`` was asked for (``var/run/wanted``; ``refinery down``
takes components off before stopping them, so a stop on purpose is never undone), and
starts a dead one again through the same code as ``refinery up``. Each restart is a line
in ``var/run/restarts.jsonl``, which ``refinery status`` summarises, and a decision told to
ops (refinery/common/decisions.py).
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from refinery.common import decisions
from refinery.common.settings import Settings, get_settings
from refinery.stack.process import ManagedProcess, module_process

log = logging.getLogger(__name__)

READY = "supervisor: watching"
# A component that stayed up this long has recovered: its next crash restarts at once.
STABLE_AFTER_S = 60.0
MAX_BACKOFF_S = 60.0


def wanted_file(settings: Settings) -> Path:
    return settings.run_dir / "wanted"


def restarts_file(settings: Settings) -> Path:
    return settings.run_dir / "restarts.jsonl"


def read_wanted(settings: Settings) -> list[str]:
    try:
        return [c for c in wanted_file(settings).read_text().split() if c]
    except FileNotFoundError:
        return []


def write_wanted(settings: Settings, components: list[str]) -> None:
    path = wanted_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{c}\n" for c in components))
    tmp.replace(path)


@dataclass(frozen=True)
class Restart:
    """One restart the supervisor made (or tried)."""

    component: str
    at: str
    attempt: int
    ok: bool
    error: str = ""


def read_restarts(settings: Settings) -> list[Restart]:
    try:
        lines = restarts_file(settings).read_text().splitlines()
    except FileNotFoundError:
        return []
    return [Restart(**json.loads(line)) for line in lines if line.strip()]


@dataclass
class _Watch:
    failures: int = 0
    next_try: float = 0.0
    up_since: float = 0.0


class Supervisor:
    """Checks every ``interval_s``; restarts what died, waiting longer after each failure."""

    def __init__(self, settings: Settings, interval_s: float = 2.0) -> None:
        from refinery.stack.stack import Stack  # the stack imports this module for wanted

        self.settings = settings
        self.stack = Stack(settings)
        self.interval_s = interval_s
        self._watch: dict[str, _Watch] = {}

    def check_once(self) -> list[Restart]:
        now = time.monotonic()
        done = []
        for component in read_wanted(self.settings):
            watch = self._watch.setdefault(component, _Watch(up_since=now))
            if self.stack.running(component):
                if now - watch.up_since > STABLE_AFTER_S:
                    watch.failures = 0
                continue
            if now < watch.next_try:
                continue
            done.append(self._restart(component, watch))
        return done

    def _restart(self, component: str, watch: _Watch) -> Restart:
        attempt = watch.failures + 1
        log.warning("supervisor: %s is down; starting it (attempt %d)", component, attempt)
        error = ""
        try:
            self.stack.up((component,))
        except Exception as exc:  # a failed start is retried after the backoff
            error = f"{type(exc).__name__}: {str(exc)[:500]}"
            log.error("supervisor: %s did not start: %s", component, error)
        ok = not error
        now = time.monotonic()
        watch.failures = 0 if ok else watch.failures + 1
        watch.up_since = now
        watch.next_try = now + min(2.0 ** max(watch.failures, 0), MAX_BACKOFF_S)
        restart = Restart(component, datetime.now(UTC).isoformat(), attempt, ok, error)
        with restarts_file(self.settings).open("a") as out:
            out.write(json.dumps(asdict(restart)) + "\n")
        told = decisions.decision(
            "process_restarted" if ok else "process_restart_failed",
            component,
            f"was down; {'started again' if ok else 'did not start'} (attempt {attempt})",
            reasons=[error] if error else [],
        )
        # Short: with Kafka itself down, the next check must not wait on a send.
        decisions.tell(self.settings, told, timeout_s=5.0)
        return restart

    def run(self, stop: threading.Event) -> None:
        log.info("%s %s", READY, " ".join(read_wanted(self.settings)) or "(nothing yet)")
        while not stop.is_set():
            self.check_once()
            stop.wait(self.interval_s)


def supervisor_process(settings: Settings) -> ManagedProcess:
    # It may be in the middle of starting something at a stop: that start is abandoned.
    return module_process(
        "supervisor",
        "refinery.stack.supervisor",
        READY,
        run_dir=settings.run_dir,
        log_dir=settings.log_dir,
        env=settings.process_env(),
    )


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    Supervisor(get_settings()).run(stop)


if __name__ == "__main__":
    main()
