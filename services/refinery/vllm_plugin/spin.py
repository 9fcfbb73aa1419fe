"""How long vLLM's processes spin after a message before they sleep on a socket.

vLLM's engine core and its worker talk through shared-memory queues; a reader that got a
message yields-and-polls (``sched_yield``) for ``busy_loop_s`` = 1 s before it waits on a
socket (``shm_broadcast.SpinCondition``, no setting in vLLM 0.32). On a GPU host that
buys microseconds; on a CPU host shared with the gateway, Kafka and the monitor, two
processes spinning a second after every decoding step take the cores those need (bench
notes in docs/BENCHMARKS.md). ``REFINERY_VLLM_SPIN_S`` sets that second; unset, vLLM's
own value stays.
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger("vllm.refinery")

ENV = "REFINERY_VLLM_SPIN_S"


def limit_spin() -> None:
    """Patch ``SpinCondition.wait`` (looked up at each call, so queues made before this
    process loaded its plugins follow it too)."""
    value = os.environ.get(ENV, "")
    if not value:
        return
    seconds = float(value)
    from vllm.distributed.device_communicators import (  # type: ignore[import-not-found]
        shm_broadcast,
    )

    condition = getattr(shm_broadcast, "SpinCondition", None)
    if condition is None:  # another vLLM than 0.32's queues: nothing of ours to shorten
        log.warning("refinery: %s ignored: this vLLM has no SpinCondition", ENV)
        return
    if getattr(condition, "_refinery_spin_s", None) == seconds:
        return
    original = getattr(condition, "_refinery_original_wait", condition.wait)

    def wait(self: Any, timeout_ms: int | None = None) -> None:
        if self.is_reader:
            self.busy_loop_s = seconds
        original(self, timeout_ms)

    condition._refinery_original_wait = original
    condition._refinery_spin_s = seconds
    condition.wait = wait
    log.info("refinery: vLLM readers spin %.3f s after a message (%s)", seconds, ENV)
