"""Waiting for a Kafka that is not there: a TimeoutError in time, and no thread left behind
(kafka-python 3.0.12's admin client leaks its IO thread when its bootstrap fails)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from refinery.common.kafka import wait_for_broker


def test_waiting_for_a_down_cluster_times_out_and_leaks_no_thread() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    before = threading.active_count()
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="not ready"):
        wait_for_broker(f"127.0.0.1:{port}", timeout_s=4)
    assert time.monotonic() - started < 10
    time.sleep(1)  # a probe of the dead address ends at its own deadline
    assert threading.active_count() <= before
