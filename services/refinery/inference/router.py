"""Which served model answers now, and the switch to a new one without failing a request.

A route is one registry version under its immutable vLLM name. New requests take the
current route; a switch has vLLM load the new adapter first (vLLM fetches it from the
registry itself: ``refinery.vllm_plugin``), then flips the route, then unloads the old
adapter once its in-flight requests have finished.

The registry's ``champion`` alias is the only truth: model events make the router look
(fast), a periodic ``reconcile`` makes it right. Every vLLM replica is asked to load the
route's adapter; one that restarted without it loads it again on the next reconcile, or on
the first request that names it, by itself.

A champion whose ``merged_url`` tag names a vLLM server that serves it (the deployer's
blue/green merged weights, at base speed) is sent there; its adapter stays loaded on the
replicas, which answer whenever that server does not.

A ``canary`` alias adds a second route: the users whose id hashes under the canary's
share get it, the same users on every gateway and every request (sticky), so one user
sees one model; requests without a user id are drawn at random. A canary in ``shadow``
mode is never returned: those users get the champion, and the canary answers the same
request on the side.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Literal

import aiohttp

from refinery.common.registry import (
    CANARY_MODE_TAG,
    CANARY_SHARE_TAG,
    MERGED_URL_TAG,
    ModelRegistry,
    VersionInfo,
)
from refinery.common.settings import Settings
from refinery.inference.exceptions import Unavailable, UpstreamError
from refinery.inference.replicas import Replica, Replicas

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    """A registry version and the name vLLM serves it under."""

    model: str
    version: str
    kind: str
    served_name: str
    arm: Literal["champion", "canary"] = "champion"
    #: a vLLM server of its own serving the version merged into its base (refinery/deployer)
    merged_url: str | None = None


def in_canary(user: str | None, canary_version: str, share: float) -> bool:
    """Is this user's traffic the canary's? A stable hash of (version, user): the same on
    every gateway and restart, and a new draw of users for each canary."""
    if user is None:
        return random.random() < share
    digest = hashlib.blake2b(f"{canary_version}:{user}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < share


class ModelRouter:
    """Holds the current route; counts in-flight requests per served name."""

    def __init__(self, settings: Settings, registry: ModelRegistry, replicas: Replicas) -> None:
        self.settings = settings
        self.registry = registry
        self.replicas = replicas
        self.current: Route | None = None
        self._inflight: Counter[str] = Counter()
        self._idle = asyncio.Condition()
        self._switch_lock = asyncio.Lock()
        # The base version vLLM was started with: adapters must apply to it.
        self.base_version: str | None = None
        #: the champion version the last reconcile read from the registry (None: never read)
        self.champion_version: str | None = None
        self.canary: Route | None = None
        self.canary_share = 0.0
        self.canary_shadow = False  # answers on the side, never returned
        #: the canary version the last reconcile read ("" none; None: never read)
        self.canary_version: str | None = None
        self._merged: dict[str, Replicas] = {}  # by url: the merged servers routes name

    def merged(self, url: str) -> Replicas:
        """The merged server at ``url``, as a one-replica pool."""
        if url not in self._merged:
            self._merged[url] = Replicas([url], self.replicas.timeout, rest_s=self.replicas.rest_s)
        return self._merged[url]

    def merged_servers(self) -> list[Replica]:
        return [r for pool in self._merged.values() for r in pool.all]

    async def close(self) -> None:
        for pool in self._merged.values():
            await pool.close()

    def route_for(self, info: VersionInfo) -> Route:
        served = self.settings.served_model_name if info.kind == "base" else info.served_name
        return Route(info.name, info.version, info.kind, served)

    def _canary_for(self, user: str | None, shadow: bool) -> Route | None:
        """The canary's route when one runs in this mode and ``user`` is in its share."""
        canary = self.canary
        if canary is None or self.canary_shadow != shadow:
            return None
        return canary if in_canary(user, canary.version, self.canary_share) else None

    def pick(self, user: str | None) -> Route | None:
        """The champion's route, or a live canary's for a user in its share."""
        return self._canary_for(user, shadow=False) or self.current

    def shadow(self, user: str | None) -> Route | None:
        """A shadow canary's route for a user in its share: it answers too, unseen."""
        return self._canary_for(user, shadow=True)

    @asynccontextmanager
    async def hold(self, route: Route) -> AsyncIterator[Route]:
        """Hold ``route`` for one request, as ``use`` does for the route it picks."""
        self._inflight[route.served_name] += 1
        try:
            yield route
        finally:
            async with self._idle:
                self._inflight[route.served_name] -= 1
                self._idle.notify_all()

    @asynccontextmanager
    async def use(self, user: str | None = None) -> AsyncIterator[Route]:
        """The route for one request, held until the request (stream included) is done."""
        route = self.pick(user)
        if route is None:
            raise Unavailable("no model is being served yet; retry shortly", retry_after_s=2)
        async with self.hold(route):
            yield route

    async def reconcile(self) -> Route | None:
        """Serve what the registry's champion and canary aliases name, with their adapters
        loaded in vLLM."""
        champion = await asyncio.to_thread(self.registry.champion)
        if champion is None:
            return self.current
        canary = await asyncio.to_thread(self.registry.canary)
        self.champion_version = champion.version
        route = await self.switch_to(champion)
        if canary is None or canary.version == champion.version:
            await self.set_canary(None)
        else:
            await self.set_canary(canary)
        self.canary_version = canary.version if canary else ""
        return route

    async def set_canary(self, info: VersionInfo | None) -> None:
        """Serve ``info`` to its share of users beside the champion; None ends the canary."""
        async with self._switch_lock:
            old = self.canary
            if info is None:
                self.canary, self.canary_share = None, 0.0
            else:
                share = float(info.tags.get(CANARY_SHARE_TAG, "0"))
                shadow = info.tags.get(CANARY_MODE_TAG) == "shadow"
                new = Route(info.name, info.version, info.kind, info.served_name, "canary")
                if new.kind == "lora":
                    await self._ensure_loaded(new.served_name)
                if new != old:
                    log.info("router: canary %s for %.0f%% of users", new.served_name, share * 100)
                self.canary, self.canary_share, self.canary_shadow = new, share, shadow
            if old is not None and old != self.canary:
                log.info("router: canary %s ended", old.served_name)
                asyncio.get_running_loop().create_task(self._retire(old))

    async def served_names(self) -> dict[str, set[str] | BaseException]:
        """What each vLLM replica serves right now (base and loaded adapters), by url; the
        exception for a replica that did not answer."""
        return await self.replicas.each(_models)

    def converged(self) -> bool:
        """Do the routes serve the champion (and canary) the registry named at the last
        reconcile?"""
        canary = self.canary.version if self.canary else ""
        return (
            self.current is not None
            and self.current.version == self.champion_version
            and canary == (self.canary_version or "")
        )

    async def switch_to(self, info: VersionInfo) -> Route:
        """Serve ``info`` from now on (its adapter loaded if vLLM lacks it); idempotent."""
        async with self._switch_lock:
            old = self.current
            new = await self._with_merged(self.route_for(info), info)
            if old is not None and replace(old, merged_url=new.merged_url) == new:
                if new.kind == "lora":
                    await self._ensure_loaded(new.served_name)
                if new != old:
                    log.info("router: %s now via %s", new.served_name, new.merged_url or "LoRA")
                    self.current = new
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
                await self._ensure_loaded(new.served_name)
            self.current = new
            log.info("router: now serving %s v%s as %s", new.model, new.version, new.served_name)
            if old is not None and old.served_name != new.served_name:
                asyncio.get_running_loop().create_task(self._retire(old))
            return new

    async def _with_merged(self, route: Route, info: VersionInfo) -> Route:
        """``route`` sent to the merged server its version's tag names, when that server
        serves it now (asked at every reconcile); else to the replicas (runtime LoRA)."""
        url = info.tags.get(MERGED_URL_TAG) if route.kind == "lora" else None
        if url is None:
            return route
        try:
            serves = route.served_name in await _models(self.merged(url).all[0])
        except (TimeoutError, aiohttp.ClientError, UpstreamError):
            serves = False
        if not serves:
            log.warning("router: %s does not serve %s; runtime LoRA", url, route.served_name)
            return route
        return replace(route, merged_url=url)

    async def _ensure_loaded(self, served_name: str) -> None:
        """Have every reachable vLLM replica that lacks ``served_name`` load it: one
        one-token completion under that name, which vLLM's refinery plugin resolves from the
        registry into the replica's own cache (nothing is read from this host's disk). The
        route flips only once all reachable replicas have it: a replica still resolving an
        adapter answers 404 to a request that names it (seen with vLLM 0.32). A replica that
        is down loads it by itself on its first request once back; a reachable one that
        cannot load it fails the switch (the reconcile tries again)."""

        async def load(replica: Replica) -> None:
            if served_name in await _models(replica):
                return
            log.info("router: vLLM %s loads %s", replica.url, served_name)
            async with replica.session.post(
                "/v1/completions",
                json={"model": served_name, "prompt": "ready?", "max_tokens": 1},
                timeout=aiohttp.ClientTimeout(total=self.settings.adapter_load_timeout_s),
            ) as resp:
                text = await resp.text()
            if resp.status != 200:
                raise UpstreamError(
                    f"vLLM {replica.url} could not load {served_name} from the registry "
                    f"({resp.status}): {text[:300]}; its log says why (is refinery's vLLM "
                    "plugin installed? `make setup` installs it)"
                )

        outcomes = await self.replicas.each(load)
        errors = [e for e in outcomes.values() if isinstance(e, BaseException)]
        down = [e for e in errors if isinstance(e, aiohttp.ClientConnectionError)]
        if len(errors) > len(down):
            raise next(e for e in errors if e not in down)
        if down and len(down) == len(outcomes):
            raise Unavailable(f"no vLLM replica reachable to load {served_name}: {down[0]}")

    async def _retire(self, old: Route) -> None:
        """Unload ``old``'s adapter once its in-flight requests are done, unless a route
        serves it again by then."""
        if old.kind != "lora":
            return
        async with self._idle:
            await self._idle.wait_for(lambda: self._inflight[old.served_name] == 0)
        async with self._switch_lock:
            serving = {r.served_name for r in (self.current, self.canary) if r is not None}
            if old.served_name in serving:
                return  # rolled back to it (or it was promoted) while we waited

            async def unload(replica: Replica) -> int:
                body = {"lora_name": old.served_name}
                async with replica.session.post("/v1/unload_lora_adapter", json=body) as resp:
                    return resp.status

            outcomes = await self.replicas.each(unload)
        log.info("router: unloaded %s: %s", old.served_name, outcomes)


async def _models(replica: Replica) -> set[str]:
    """The model names ``replica`` serves right now (base and loaded adapters)."""
    async with replica.session.get("/v1/models", timeout=aiohttp.ClientTimeout(total=5)) as resp:
        if resp.status != 200:
            raise UpstreamError(f"vLLM {replica.url} /v1/models answered {resp.status}")
        body = await resp.json()
    return {card["id"] for card in body.get("data", [])}
