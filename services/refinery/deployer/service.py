"""The deployer: keeps a vLLM server serving the champion's merged weights, blue/green.

The registry's ``champion`` alias is the only truth, as for the gateway. Every
``route_reconcile_s`` the deployer looks at it and at its two slots (``vllm-merged-0`` and
``-1``, on ``vllm_merged_port`` and the port after it):

- a LoRA champion no slot serves yet is merged into its base weights (refinery/deployer/
  merge.py, once per version) and started on a free slot; once that server answers, the
  version's ``merged_url`` tag names it, and the gateways send its traffic there at their next
  look (meanwhile, and whenever it does not answer, runtime LoRA on the replicas serves it);
- a slot serving anything else is retired: its version's tag goes first, the server keeps
  answering for ``merged_drain_s`` (requests already sent, a gateway that has not looked
  yet), then stops. Until then a rollback to it is instant.

A base champion needs no merged server (the replicas serve it as it is). The slots are
processes of their own: a deployer that dies and is started again finds them by asking
them what they serve, so serving never waits on it (in a container they share its fate:
runtime LoRA serves until it has started them again). It looks at them on its own host and
tags the URL gateways reach them at (``vllm_merged_host``: the deployer's Service in a
cluster).
"""

from __future__ import annotations

import logging
import signal
import threading
import time

import httpx

from refinery.common.registry import MERGED_URL_TAG, ModelRegistry, VersionInfo
from refinery.common.settings import Settings, get_settings
from refinery.deployer.merge import merge_adapter, merged_dir
from refinery.stack.vllm import merged_url, merged_vllm_process, slot_url

log = logging.getLogger(__name__)

READY = "deployer: following the champion"
SLOTS = (0, 1)


def served_by(url: str) -> str | None:
    """The model name the vLLM server at ``url`` serves; None when it does not answer."""
    try:
        resp = httpx.get(f"{url}/v1/models", timeout=5.0)
        resp.raise_for_status()
        cards = resp.json().get("data", [])
    except (httpx.HTTPError, ValueError):
        return None
    return str(cards[0]["id"]) if cards else None


class MergedDeployer:
    def __init__(self, settings: Settings, registry: ModelRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry or ModelRegistry(settings)
        self._retiring: dict[int, float] = {}  # slot -> when it stops

    def step(self) -> None:
        """Bring the slots one step towards serving the champion (blocks while a merged
        server starts: a minute or so)."""
        champion = self.registry.champion() if self.registry.exists() else None
        wanted = champion if champion is not None and champion.kind == "lora" else None
        serving = {slot: served_by(slot_url(self.settings, slot)) for slot in SLOTS}
        live = None
        if wanted is not None:
            live = next((s for s, name in serving.items() if name == wanted.served_name), None)
            tagged = wanted.tags.get(MERGED_URL_TAG)  # read with the alias: no second look
            if live is None:
                if tagged is not None:  # a server it named is gone: LoRA serves meanwhile
                    self._untag(wanted.version)
                    tagged = None
                live = self._start(wanted, serving)
                serving[live] = wanted.served_name
            self._retiring.pop(live, None)
            if tagged != merged_url(self.settings, live):
                self._tag(wanted, merged_url(self.settings, live))
        for slot, name in serving.items():
            if slot != live and name is not None:
                self._retire(slot, name)

    def _start(self, champion: VersionInfo, serving: dict[int, str | None]) -> int:
        """Merge ``champion`` and start it on a slot: a free one, else the one retiring
        first (stopped now: its version lost the champion before this one won it)."""
        free = [s for s in SLOTS if serving[s] is None]
        slot = free[0] if free else min(SLOTS, key=lambda s: self._retiring.get(s, 0.0))
        started = time.monotonic()
        models_dir = self.settings.models_dir
        base = self.registry.local_copy(self.registry.serving_base(champion), models_dir)
        adapter = self.registry.local_copy(champion, models_dir)
        weights = merge_adapter(base, adapter, merged_dir(models_dir, champion.served_name))
        merged_at = time.monotonic()
        proc = merged_vllm_process(self.settings, slot, weights, champion.served_name)
        proc.stop()  # whatever the slot served before
        self._retiring.pop(slot, None)
        proc.start()
        log.info(
            "deployer: %s merged in %.1f s, serving on %s after %.1f s more",
            champion.served_name,
            merged_at - started,
            merged_url(self.settings, slot),
            time.monotonic() - merged_at,
        )
        return slot

    def _tag(self, info: VersionInfo, url: str) -> None:
        self.registry.client.set_model_version_tag(
            self.registry.name, info.version, MERGED_URL_TAG, url
        )
        log.info("deployer: %s tagged %s=%s", info.served_name, MERGED_URL_TAG, url)

    def _untag(self, version: str) -> None:
        self.registry.client.delete_model_version_tag(self.registry.name, version, MERGED_URL_TAG)

    def _retire(self, slot: int, served_name: str) -> None:
        """Untag the slot's version, and stop the slot ``merged_drain_s`` later."""
        now = time.monotonic()
        if slot not in self._retiring:
            version = served_name.rsplit("-v", 1)[-1]
            url = merged_url(self.settings, slot)
            try:
                if self.registry.get(version).tags.get(MERGED_URL_TAG) == url:
                    self._untag(version)
            except Exception as exc:  # a version deleted from the registry has no tag to drop
                log.warning("deployer: could not untag %s: %s", served_name, exc)
            self._retiring[slot] = now + self.settings.merged_drain_s
            log.info(
                "deployer: retiring %s on %s in %.0f s",
                served_name,
                url,
                self.settings.merged_drain_s,
            )
        if now >= self._retiring[slot]:
            merged_vllm_process(self.settings, slot).stop()
            del self._retiring[slot]
            log.info("deployer: stopped %s (slot %d)", served_name, slot)

    def run(self, stop: threading.Event) -> None:
        log.info("%s (slots %s)", READY, [merged_url(self.settings, s) for s in SLOTS])
        while not stop.is_set():
            try:
                self.step()
            except Exception:  # the registry or a start failed: the next look tries again
                log.exception("deployer: step failed; trying again")
            stop.wait(min(self.settings.route_reconcile_s, 5.0))


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per look at the slots
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    MergedDeployer(get_settings()).run(stop)
