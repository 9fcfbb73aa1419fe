"""A bench measures one path, not a retraining run beside it on the same cores: the stack
a bench runs on (after `make demo`, say) may still be retraining, or the bench's own
traffic may make the monitor ask for a run. Wait until the retrainer is idle before
measuring, and refuse the figures when a run went on during the measurement."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.report import NotLikeForLike
from refinery.common.settings import Settings


def _retrainer(settings: Settings) -> tuple[bool, float] | None:
    """(a run is going on, runs that trained so far) from the retrainer's metrics; None
    when no retrainer is up (nothing can compete then). A trigger found done before
    (``already_done``) trains nothing and is not counted."""
    url = f"http://{settings.metrics_host}:{settings.retrainer_metrics_port}/metrics"
    try:
        text = httpx.get(url, timeout=10).raise_for_status().text
    except httpx.HTTPError:
        return None
    running, runs = False, 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "refinery_retrainer_running":
                running = sample.value > 0
            elif (
                sample.name == "refinery_retrainer_runs_total"
                and sample.labels.get("outcome") != "already_done"
            ):
                runs += sample.value
    return running, runs


@contextmanager
def without_retraining(settings: Settings, wait_s: float = 900) -> Iterator[None]:
    """Run the body once the retrainer is idle; raise NotLikeForLike if a run went on
    during it."""
    deadline = time.monotonic() + wait_s
    state = _retrainer(settings)
    if state is not None and state[0]:
        print("waiting for the retrainer's run to end before measuring", flush=True)
    while state is not None and state[0]:
        if time.monotonic() > deadline:
            raise NotLikeForLike(f"the retrainer was still training after {wait_s:.0f} s")
        time.sleep(5)
        state = _retrainer(settings)
    yield
    after = _retrainer(settings)
    if state is not None and after is not None and (after[0] or after[1] != state[1]):
        raise NotLikeForLike(
            "a retraining run went on during the measurement (the bench's traffic may have "
            "made the monitor ask for one): run `make bench` again"
        )
