"""Completions through vLLM: route to the champion, sign an id per choice, log each choice
as a prediction."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

from refinery.common.events import PredictionEvent, last_user_text
from refinery.inference.exceptions import (
    BadRequest,
    GatewayError,
    NotFound,
    Unavailable,
    UpstreamError,
)
from refinery.inference.ids import PredictionIds
from refinery.inference.metrics import GatewayMetrics
from refinery.inference.outbox import Outbox
from refinery.inference.protocol import ChatCompletionRequest, CompletionRequest
from refinery.inference.replicas import Replicas
from refinery.inference.router import ModelRouter, Route

log = logging.getLogger(__name__)

Endpoint = Literal["completions", "chat.completions"]
_PATHS = {"completions": "/v1/completions", "chat.completions": "/v1/chat/completions"}
_ID_KINDS = {"completions": "cmpl", "chat.completions": "chatcmpl"}


@dataclass(frozen=True)
class Answer:
    """One choice as it is logged: its text and the tokens of its prompt and its own."""

    text: str
    prompt_tokens: int
    completion_tokens: int


def _answers(body: dict[str, Any], endpoint: Endpoint, n: int) -> list[Answer]:
    """Each choice of a (non-streamed) vLLM answer, in index order."""
    usage = body.get("usage") or {}
    prompt_tokens = int(usage.get("prompt_tokens", 0))
    answers = []
    for choice in sorted(body["choices"], key=lambda c: int(c["index"])):
        text = choice["text"] if endpoint == "completions" else choice["message"]["content"]
        # One choice: the usage is its own. More: usage sums them, and each choice's
        # token ids (asked for with n > 1, see upstream_body) are its own.
        tokens = usage.get("completion_tokens", 0) if n == 1 else len(choice["token_ids"])
        answers.append(Answer(text or "", prompt_tokens, int(tokens)))
    return answers


def _label(part: dict[str, Any], ids: list[str], served_name: str, keep_token_ids: bool) -> None:
    """An answer or a streamed chunk as the client gets it: the first choice's id as its
    ``id``, each choice's own ``prediction_id``, the served name, and without the token ids
    the gateway asked vLLM for on its own account."""
    part["id"] = ids[0]
    part["model"] = served_name
    for piece in (part, *(part.get("choices") or ())):
        if piece is not part:
            piece["prediction_id"] = ids[int(piece["index"])]
        if not keep_token_ids:
            piece.pop("token_ids", None)
            piece.pop("prompt_token_ids", None)


def _upstream_error(status: int, text: str) -> GatewayError:
    try:
        message = json.loads(text)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = text[:500]
    if status == 400:
        return BadRequest(f"vLLM rejected the request: {message}")
    return UpstreamError(f"vLLM answered {status}: {message}")


class CompletionService:
    """One request in, one logged prediction per choice out."""

    def __init__(
        self,
        model_name: str,
        router: ModelRouter,
        replicas: Replicas,
        outbox: Outbox,
        ids: PredictionIds,
        metrics: GatewayMetrics,
    ) -> None:
        self.model_name = model_name
        self.router = router
        self.replicas = replicas
        self.outbox = outbox
        self.ids = ids
        self.metrics = metrics
        self._shadows: set[asyncio.Task[None]] = set()  # held: the loop keeps weak references

    def check_model(self, requested: str) -> None:
        route = self.router.current
        allowed = {self.model_name} | ({route.served_name} if route else set())
        if requested not in allowed:
            raise NotFound(
                f"model {requested!r} is not served here; use {self.model_name!r} "
                "(the champion) — GET /v1/models lists it"
            )

    async def complete(
        self, request: CompletionRequest | ChatCompletionRequest, endpoint: Endpoint, tenant: str
    ) -> tuple[dict[str, Any], Route]:
        """vLLM's answer with the prediction's id and the served name, and the route that
        answered (the champion's or a canary's)."""
        self.check_model(request.model)
        route, resp, held, started = await self._start(request, endpoint)
        try:
            body = await resp.json()
        finally:
            resp.release()
            await held.aclose()
        latency_ms = (time.perf_counter() - started) * 1000
        answers = _answers(body, endpoint, request.n)
        ids = self._new_ids(endpoint, tenant, len(answers))
        self._log(request, endpoint, route, answers, latency_ms, ids)
        self._shadow_if_any(request, endpoint, ids)
        _label(body, ids, route.served_name, request.client_wants_token_ids)
        return body, route

    def _new_ids(self, endpoint: Endpoint, tenant: str, n: int) -> list[str]:
        """A signed prediction id per choice: each is rated on its own."""
        return [self.ids.new(_ID_KINDS[endpoint], tenant) for _ in range(n)]

    async def open_stream(
        self, request: CompletionRequest | ChatCompletionRequest, endpoint: Endpoint, tenant: str
    ) -> tuple[AsyncIterator[bytes], Route]:
        """Start the upstream stream (errors surface before any byte is sent), then relay it."""
        self.check_model(request.model)
        route, resp, held, started = await self._start(request, endpoint)
        ids = self._new_ids(endpoint, tenant, request.n)
        return self._relay(request, endpoint, route, resp, held, started, ids), route

    async def _start(
        self, request: CompletionRequest | ChatCompletionRequest, endpoint: Endpoint
    ) -> tuple[Route, aiohttp.ClientResponse, AsyncExitStack, float]:
        """Send the request on the current route to a vLLM replica and return its 200
        response, with the route and the replica held until the caller closes ``held``."""
        held = AsyncExitStack()
        try:
            route = await held.enter_async_context(self.router.use(request.user))
            started = time.perf_counter()
            body = request.upstream_body(route.served_name)
            resp = await self._post_merged(held, route, _PATHS[endpoint], body)
            if resp is None:
                resp = await self.replicas.post(held, _PATHS[endpoint], body)
            if resp.status == 404 and route.kind == "lora":
                # Another gateway unloaded the old champion's adapter as this request
                # reached vLLM (each gateway waits for its own requests only): sent again,
                # the replica's resolver loads it from the registry (a promotion test on two
                # gateways, 2026-12-01).
                resp.release()
                resp = await self.replicas.post(held, _PATHS[endpoint], body)
            if resp.status != 200:
                text = await resp.text()
                resp.release()
                raise _upstream_error(resp.status, text)
        except BaseException:
            await held.aclose()
            raise
        return route, resp, held, started

    async def _post_merged(
        self, held: AsyncExitStack, route: Route, path: str, body: dict[str, Any]
    ) -> aiohttp.ClientResponse | None:
        """The answer of the route's merged server (refinery/deployer); None when it has
        none, is down, or no longer serves the version (404): the replicas answer then."""
        if route.merged_url is None:
            return None
        try:
            resp = await self.router.merged(route.merged_url).post(held, path, body)
        except Unavailable:
            self.metrics.merged_fallbacks.inc()
            return None
        if resp.status == 404:
            resp.release()
            self.metrics.merged_fallbacks.inc()
            return None
        return resp

    async def _relay(
        self,
        request: CompletionRequest | ChatCompletionRequest,
        endpoint: Endpoint,
        route: Route,
        resp: aiohttp.ClientResponse,
        held: AsyncExitStack,
        started: float,
        ids: list[str],
    ) -> AsyncIterator[bytes]:
        """vLLM's chunks, each with the first choice's id as its ``id`` and each choice with
        its own ``prediction_id``; every choice logged once the stream is done."""
        parts: list[list[str]] = [[] for _ in ids]
        tokens = [0] * len(ids)
        usage: dict[str, Any] = {}
        try:
            async for raw in resp.content:
                line = raw.decode().rstrip("\r\n")
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    latency_ms = (time.perf_counter() - started) * 1000
                    prompt_tokens = int(usage.get("prompt_tokens", 0))
                    if len(ids) == 1:
                        tokens[0] = int(usage.get("completion_tokens", 0))
                    answers = [
                        Answer("".join(parts[i]), prompt_tokens, tokens[i]) for i in range(len(ids))
                    ]
                    self._log(request, endpoint, route, answers, latency_ms, ids)
                    self._shadow_if_any(request, endpoint, ids)
                    yield b"data: [DONE]\n\n"
                    return
                chunk = json.loads(data)
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for choice in chunk.get("choices") or []:
                    i = int(choice["index"])
                    delta = (
                        choice.get("text")
                        if endpoint == "completions"
                        else ((choice.get("delta") or {}).get("content"))
                    )
                    parts[i].append(delta or "")
                    tokens[i] += len(choice.get("token_ids") or ())
                _label(chunk, ids, route.served_name, request.client_wants_token_ids)
                if not chunk.get("choices") and not request.client_wants_usage_chunk:
                    continue  # the usage-only chunk we asked for on our own account
                if not request.client_wants_usage_chunk:
                    chunk.pop("usage", None)
                yield f"data: {json.dumps(chunk)}\n\n".encode()
        finally:
            resp.release()
            await held.aclose()

    def _shadow_if_any(
        self,
        request: CompletionRequest | ChatCompletionRequest,
        endpoint: Endpoint,
        shown_ids: list[str],
    ) -> None:
        """A shadow canary covering this user answers the same request, after the user has
        the champion's answer: on the side, logged, never returned (its choice i the shadow
        of the user's choice i)."""
        route = self.router.shadow(request.user)
        if route is None:
            return
        task = asyncio.get_running_loop().create_task(
            self._shadow(request, endpoint, route, shown_ids)
        )
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    async def _shadow(
        self,
        request: CompletionRequest | ChatCompletionRequest,
        endpoint: Endpoint,
        route: Route,
        shown_ids: list[str],
    ) -> None:
        quiet = request.model_copy(update={"stream": False, "stream_options": None})
        try:
            async with AsyncExitStack() as held:
                await held.enter_async_context(self.router.hold(route))
                started = time.perf_counter()
                resp = await self.replicas.post(
                    held, _PATHS[endpoint], quiet.upstream_body(route.served_name)
                )
                async with resp:
                    if resp.status != 200:
                        log.info(
                            "shadow %s answered %d; not logged", route.served_name, resp.status
                        )
                        return
                    body = await resp.json()
            latency_ms = (time.perf_counter() - started) * 1000
            answers = _answers(body, endpoint, quiet.n)
            shadow_ids = [f"{shown_id}.shadow" for shown_id in shown_ids]
            self._log(quiet, endpoint, route, answers, latency_ms, shadow_ids, shown_ids)
        except Exception as exc:  # the user has their answer; a shadow never fails them
            log.warning("shadow %s: %s: %s", route.served_name, type(exc).__name__, exc)

    def _log(
        self,
        request: CompletionRequest | ChatCompletionRequest,
        endpoint: Endpoint,
        route: Route,
        answers: list[Answer],
        latency_ms: float,
        ids: list[str],
        shadow_of: list[str] | None = None,
    ) -> None:
        """Each choice as a prediction, into the outbox in one write (all or none)."""
        if isinstance(request, CompletionRequest):
            prompt, messages = request.prompt, None
        else:
            messages = request.turns()
            prompt = last_user_text(messages)
        params = request.sampling_params()
        events = [
            PredictionEvent(
                prediction_id=prediction_id,
                endpoint=endpoint,
                prompt=prompt,
                messages=messages,
                completion=answer.text,
                model=route.model,
                model_version=route.version,
                served_name=route.served_name,
                params=params,
                prompt_tokens=answer.prompt_tokens,
                completion_tokens=answer.completion_tokens,
                latency_ms=latency_ms,
                segment=request.segment,
                user=request.user,
                shadow_of=shadow_of[i] if shadow_of else None,
            )
            for i, (answer, prediction_id) in enumerate(zip(answers, ids, strict=True))
        ]
        self.outbox.append(events)  # the sender picks them up on its next tick
        # The choices share one prompt: vLLM counted its tokens once.
        self.metrics.tokens.labels("prompt").inc(events[0].prompt_tokens)
        self.metrics.tokens.labels("completion").inc(sum(e.completion_tokens for e in events))
