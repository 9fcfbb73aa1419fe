"""The vLLM servers behind one gateway: least outstanding requests first, and one more try
elsewhere when a replica is gone.

Every replica serves the same base and resolves adapters from the registry itself
(``refinery.vllm_plugin``), so any of them can answer any request. A request goes to the
replica with the fewest requests in flight from this gateway (ties in turn); it counts
against that replica until its answer, stream included, is read. A replica that refuses
the connection is skipped for ``rest_s`` and the request is sent once to another one; a
connection that drops before any answer (a replica that died mid-request, or a pooled
connection the server closed) is sent once more too, elsewhere when there is an elsewhere.
Nothing reached a model that did not answer, so sending again is safe.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from refinery.inference.exceptions import Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(eq=False)
class Replica:
    url: str
    session: aiohttp.ClientSession
    outstanding: int = 0
    resting_until: float = 0.0  # monotonic time before which it is not picked
    sent: int = 0  # requests that got an answer started here (for /metrics and tests)


class Replicas:
    """``post`` sends a request to the best replica; ``each`` asks all of them."""

    def __init__(
        self,
        urls: Sequence[str],
        timeout: aiohttp.ClientTimeout,
        connections_per_replica: int = 256,
        rest_s: float = 2.0,
    ) -> None:
        if not urls:
            raise ValueError("at least one vLLM url")
        self.all = [
            Replica(
                url,
                aiohttp.ClientSession(
                    base_url=url,
                    timeout=timeout,
                    connector=aiohttp.TCPConnector(limit=connections_per_replica),
                ),
            )
            for url in urls
        ]
        self.timeout = timeout
        self.rest_s = rest_s
        self._turn = itertools.count()

    def pick(self, avoid: Sequence[Replica] = ()) -> Replica | None:
        """The replica with the fewest requests outstanding, not resting and not in
        ``avoid``; resting ones only when nothing else is left; None when all are avoided."""
        candidates = [r for r in self.all if r not in avoid]
        if not candidates:
            return None
        now = time.monotonic()
        awake = [r for r in candidates if r.resting_until <= now] or candidates
        fewest = min(r.outstanding for r in awake)
        tied = [r for r in awake if r.outstanding == fewest]
        return tied[next(self._turn) % len(tied)]

    async def post(
        self, held: AsyncExitStack, path: str, body: dict[str, Any]
    ) -> aiohttp.ClientResponse:
        """POST to the best replica; the replica counts the request until ``held`` closes
        (the caller closes it once the answer is read)."""
        tried: list[Replica] = []
        replica = self.pick()
        while replica is not None:
            replica.outstanding += 1
            try:
                resp = await replica.session.post(path, json=body)
            except aiohttp.ClientConnectorError as exc:  # refused: it is down
                replica.outstanding -= 1
                replica.resting_until = time.monotonic() + self.rest_s
                log.warning("vLLM %s refused a connection (%s); resting it", replica.url, exc)
                tried.append(replica)
                replica = self.pick(avoid=tried) if len(tried) < 2 else None
                continue
            except aiohttp.ClientConnectionError as exc:  # dropped before any answer
                replica.outstanding -= 1
                log.info("vLLM %s dropped a request before answering (%s)", replica.url, exc)
                tried.append(replica)
                if len(tried) >= 2:
                    break
                # Elsewhere when there is an elsewhere; else the same on a fresh connection.
                replica = self.pick(avoid=tried) or replica
                continue
            except BaseException:
                replica.outstanding -= 1
                raise
            replica.sent += 1
            held.callback(_release, replica)
            return resp
        raise Unavailable(
            "vLLM unreachable: " + ", ".join(r.url for r in tried or self.all), retry_after_s=2
        )

    async def each(self, ask: Callable[[Replica], Awaitable[T]]) -> dict[str, T | BaseException]:
        """``ask`` every replica at once: its answer, or the exception it raised, by url."""
        answers = await asyncio.gather(*(ask(r) for r in self.all), return_exceptions=True)
        return {r.url: a for r, a in zip(self.all, answers, strict=True)}

    async def close(self) -> None:
        for replica in self.all:
            await replica.session.close()


def _release(replica: Replica) -> None:
    replica.outstanding -= 1


class ReplicaMetrics(Collector):
    """Per replica, read at scrape time: requests sent, requests in flight, resting or not."""

    def __init__(self, replicas: Callable[[], Iterable[Replica]]) -> None:
        self.replicas = replicas

    def collect(self) -> Iterable[Metric]:
        sent = CounterMetricFamily(
            "refinery_vllm_requests",
            "Requests this gateway sent to each vLLM replica",
            labels=["replica"],
        )
        inflight = GaugeMetricFamily(
            "refinery_vllm_outstanding",
            "Requests this gateway has in flight at each vLLM replica",
            labels=["replica"],
        )
        resting = GaugeMetricFamily(
            "refinery_vllm_resting",
            "1 while a replica that refused a connection is skipped",
            labels=["replica"],
        )
        now = time.monotonic()
        for r in self.replicas():
            sent.add_metric([r.url], r.sent)
            inflight.add_metric([r.url], r.outstanding)
            resting.add_metric([r.url], 1.0 if r.resting_until > now else 0.0)
        return [sent, inflight, resting]
