"""Which served model answers now, and the switch to a new one without failing a request.

A route is one registry version under its immutable vLLM name. New requests take the
current route; a switch loads the new adapter first, then flips the route, then unloads
the old adapter once its in-flight requests have finished.

The registry's ``champion`` alias is the only truth: model events make the router look
(fast), a periodic ``reconcile`` makes it right. Reconciling also puts the adapter back
into a vLLM that restarted without it, so a vLLM restart heals without a gateway restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from services.common.registry import ModelRegistry, VersionInfo
from services.common.settings import Settings
from services.inference.exceptions import Unavailable, UpstreamError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    """A registry version and the name vLLM serves it under."""

    model: str
    version: str
    kind: str
    served_name: str


class ModelRouter:
    """Holds the current route; counts in-flight requests per served name."""

    def __init__(
        self, settings: Settings, registry: ModelRegistry, vllm: aiohttp.ClientSession
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.vllm = vllm
        self.current: Route | None = None
        self._inflight: Counter[str] = Counter()
        self._idle = asyncio.Condition()
        self._switch_lock = asyncio.Lock()
        # The base version vLLM was started with: adapters must apply to it.
        self.base_version: str | None = None
        #: the champion version the last reconcile read from the registry (None: never read)
        self.champion_version: str | None = None

    def route_for(self, info: VersionInfo) -> Route:
        served = self.settings.served_model_name if info.kind == "base" else info.served_name
        return Route(info.name, info.version, info.kind, served)

    @asynccontextmanager
    async def use(self) -> AsyncIterator[Route]:
        """The route for one request, held until the request (stream included) is done."""
        route = self.current
        if route is None:
            raise Unavailable("no model is being served yet; retry shortly", retry_after_s=2)
        self._inflight[route.served_name] += 1
        try:
            yield route
        finally:
            async with self._idle:
                self._inflight[route.served_name] -= 1
                self._idle.notify_all()

    async def reconcile(self) -> Route | None:
        """Serve what the registry's champion alias names, with its adapter loaded in vLLM."""
        champion = await asyncio.to_thread(self.registry.champion)
        if champion is None:
            return self.current
        self.champion_version = champion.version
        return await self.switch_to(champion)

    async def served_names(self) -> set[str]:
        """The model names vLLM serves right now (base and loaded adapters)."""
        async with self.vllm.get("/v1/models", timeout=aiohttp.ClientTimeout(total=5)) as resp:
            if resp.status != 200:
                raise UpstreamError(f"vLLM /v1/models answered {resp.status}")
            body = await resp.json()
        return {card["id"] for card in body.get("data", [])}

    async def heal(self, broken: Route) -> None:
        """vLLM does not know ``broken`` (it restarted and lost its runtime adapters):
        load it again unless someone already did."""
        async with self._switch_lock:
            if self.current != broken or broken.kind != "lora":
                return
            if broken.served_name in await self.served_names():
                return
            info = await asyncio.to_thread(self.registry.get, broken.version)
            log.warning("router: vLLM lost %s; loading it again", broken.served_name)
            await self._load_adapter(info, broken.served_name)

    def converged(self) -> bool:
        """Does the route serve the champion the registry named at the last reconcile?"""
        return self.current is not None and self.current.version == self.champion_version

    async def switch_to(self, info: VersionInfo) -> Route:
        """Serve ``info`` from now on (its adapter loaded if vLLM lacks it); idempotent."""
        async with self._switch_lock:
            new = self.route_for(info)
            old = self.current
            if old == new:
                if new.kind == "lora" and new.served_name not in await self.served_names():
                    log.warning("router: vLLM lost %s; loading it again", new.served_name)
                    await self._load_adapter(info, new.served_name)
                return new
            base = await asyncio.to_thread(self.registry.serving_base, info)
            if self.base_version is None:
                self.base_version = base.version
            elif base.version != self.base_version:
                raise UpstreamError(
                    f"v{info.version} needs base v{base.version}, but vLLM serves base "
                    f"v{self.base_version}; restart vLLM (`refinery down vllm gateway` then "
                    "`refinery up`) to change the base model"
                )
            if new.kind == "lora":
                await self._load_adapter(info, new.served_name)
            self.current = new
            log.info("router: now serving %s v%s as %s", new.model, new.version, new.served_name)
            if old is not None and old.kind == "lora" and old.served_name != new.served_name:
                asyncio.get_running_loop().create_task(self._retire(old))
            return new

    async def _load_adapter(self, info: VersionInfo, served_name: str) -> None:
        local: Path = await asyncio.to_thread(
            self.registry.local_copy, info, self.settings.models_dir
        )
        async with self.vllm.post(
            "/v1/load_lora_adapter", json={"lora_name": served_name, "lora_path": str(local)}
        ) as resp:
            text = await resp.text()
        # 400 "already loaded" is fine: names are immutable, so it is this very adapter.
        if resp.status != 200 and "already" not in text:
            raise UpstreamError(f"vLLM refused adapter {served_name}: {text[:300]}")

    async def _retire(self, old: Route) -> None:
        async with self._idle:
            await self._idle.wait_for(lambda: self._inflight[old.served_name] == 0)
        async with self._switch_lock:
            if self.current is not None and self.current.served_name == old.served_name:
                return  # rolled back to it while we waited
            async with self.vllm.post(
                "/v1/unload_lora_adapter", json={"lora_name": old.served_name}
            ) as resp:
                status = resp.status
        log.info("router: unloaded %s (%d)", old.served_name, status)
