"""Merged serving, blue/green (REFINERY_SERVE_MERGED=1): the deployer serves each new LoRA
champion merged into its base on a vLLM server of its own, the gateway sends the champion's
traffic there once it answers, and the old server retires; no request fails on the way,
and the merged server answers as base + adapter on the replicas does."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx

from refinery.common.registry import MERGED_URL_TAG, ModelRegistry, VersionInfo
from refinery.common.settings import Settings
from refinery.stack.deployer import deployer_process, merged_slots
from refinery.stack.vllm import merged_url
from tests.inference.helpers import (
    PROMPT,
    Load,
    make_champion,
    register_adapter,
    serve_the_base_again,
)


def _gateway_metric(settings: Settings, series: str) -> float:
    """One series of the gateway's /metrics (0 before its first count)."""
    for line in httpx.get(f"{settings.gateway_url}/metrics", timeout=10).text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _sent_to(settings: Settings, url: str) -> float:
    """Requests the gateway sent to ``url``."""
    return _gateway_metric(settings, f'refinery_vllm_requests_total{{replica="{url}"}}')


def _until(what: str, check: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout_s:.0f} s: {what}"
        time.sleep(0.5)


def _answer(url: str, model: str, prompt: str) -> str:
    body = {"model": model, "prompt": prompt, "max_tokens": 8, "temperature": 0}
    resp = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
    resp.raise_for_status()
    return str(resp.json()["choices"][0]["text"])


def test_each_champion_is_served_merged_blue_green_with_no_failed_request(
    full_stack: Settings, tmp_path: Path
) -> None:
    settings = full_stack.model_copy(update={"serve_merged": True, "merged_drain_s": 5.0})
    registry = ModelRegistry(settings)
    base = registry.local_copy(registry.get("1"), tmp_path / "m")
    first: VersionInfo = register_adapter(settings, base, tmp_path / "a1")
    second: VersionInfo = register_adapter(settings, base, tmp_path / "a2")
    blue, green = merged_url(settings, 0), merged_url(settings, 1)
    deployer = deployer_process(settings)

    def tag(info: VersionInfo) -> str | None:
        return registry.get(info.version).tags.get(MERGED_URL_TAG)

    try:
        # Every switch happens under load; the merged servers start without it: on these 2
        # cores a vLLM starting beside the loaded stack waited over 4 minutes for CPU in its
        # first import (seen in 3 of 5 runs), nothing a deployer can change.
        make_champion(settings, first, "promoted", previous="1")
        deployer.start()
        _until("the first champion merged and served", lambda: tag(first) == blue, 300)
        with Load(settings, threads=2, pause_s=0.1) as load:
            load.wait_for(first.served_name)
            _until("the gateway sends to it", lambda: _sent_to(settings, blue) > 0, 30)
            make_champion(settings, second, "promoted", previous=first.version)
            load.wait_for(second.served_name)  # at once, by runtime LoRA
            time.sleep(1)  # a request that took the old route just before has its answer
            sent_blue = _sent_to(settings, blue)
            time.sleep(2)
        assert _sent_to(settings, blue) == sent_blue  # nothing once its version lost
        _until("the second champion served merged", lambda: tag(second) == green, 300)
        # Base + adapter, two ways: merged weights, and runtime LoRA on the replica.
        prompts = [PROMPT, "Ticket: I was charged twice\nTeam:", "Ticket: the app crashes\nTeam:"]
        for prompt in prompts:
            lora = _answer(settings.vllm_url, second.served_name, prompt)
            assert _answer(green, second.served_name, prompt) == lora, prompt
        with Load(settings, threads=2, pause_s=0.1) as load2:
            _until("the gateway sends to it", lambda: _sent_to(settings, green) > 0, 30)
            _until("the first one retired", lambda: merged_slots(settings)[0].pid() is None, 60)
            assert tag(first) is None
            # A merged server that dies: its requests are answered by runtime LoRA.
            fallbacks = _gateway_metric(settings, "refinery_merged_fallbacks_total")
            merged_slots(settings)[1].kill()
            time.sleep(3)
            assert _gateway_metric(settings, "refinery_merged_fallbacks_total") > fallbacks
        assert load.failures == [] and load2.failures == []
        assert len(load.served) > 20 and len(load2.served) > 20
    finally:
        deployer.stop()
        for slot in merged_slots(settings):
            slot.stop()
        serve_the_base_again(full_stack, "merged serving tests done: the base serves again")
