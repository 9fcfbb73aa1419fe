"""``/healthz`` (the process answers), ``/readyz`` (vLLM and Kafka reachable), ``/metrics``."""

from __future__ import annotations

import asyncio

import aiohttp
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.common.kafka import wait_for_broker

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    state = request.app.state
    checks: dict[str, str] = {}
    try:
        async with state.vllm.get("/health", timeout=aiohttp.ClientTimeout(total=2)) as resp:
            checks["vllm"] = "ok" if resp.status == 200 else f"status {resp.status}"
    except Exception as exc:  # any failure to reach it means "not ready"
        checks["vllm"] = f"unreachable: {type(exc).__name__}"
    try:
        await asyncio.to_thread(wait_for_broker, state.settings.kafka_bootstrap, 2.0)
        checks["kafka"] = "ok"
    except TimeoutError:
        checks["kafka"] = "unreachable"
    checks["model"] = state.router.current.served_name if state.router.current else "none"
    ready = checks["vllm"] == "ok" and checks["kafka"] == "ok" and state.router.current
    return JSONResponse({"ready": bool(ready), **checks}, status_code=200 if ready else 503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    m = request.app.state.metrics
    m.backlog.set(len(request.app.state.outbox))
    route = request.app.state.router.current  # read at scrape time: right after a switch too
    if route is not None:
        m.model_version.set(float(route.version))
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
