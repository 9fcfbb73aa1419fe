"""``/healthz`` (the process answers), ``/readyz`` (vLLM and Kafka reachable, the champion
served, the prediction log sending), ``/metrics``."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from refinery.common.kafka import wait_for_any_broker
from refinery.inference.protocol import Readiness
from refinery.inference.router import ModelRouter, Route

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={
        200: {"model": Readiness, "description": "every check is ok"},
        503: {"model": Readiness, "description": "a check is not ok; its value says why"},
    },
)
async def readyz(request: Request) -> JSONResponse:
    state = request.app.state
    checks: dict[str, str] = {}
    route = state.router.current
    answers = await state.router.served_names()
    served = {url: names for url, names in answers.items() if isinstance(names, set)}
    # Ready while any replica answers: the others get no requests until they are back.
    if served:
        checks["vllm"] = "ok"
    else:
        reasons = {type(e).__name__ for e in answers.values() if isinstance(e, BaseException)}
        checks["vllm"] = f"unreachable: {', '.join(sorted(reasons))}"
    try:
        await asyncio.to_thread(wait_for_any_broker, state.settings.kafka_bootstrap, 2.0)
        checks["kafka"] = "ok"
    except TimeoutError:
        checks["kafka"] = "unreachable"
    checks["model"] = _model_check(state.router, route, served)
    checks["prediction_log"] = state.sender.problem() or "ok"
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse({"ready": bool(ready), **checks}, status_code=200 if ready else 503)


def _model_check(
    model_router: ModelRouter, route: Route | None, served: dict[str, set[str]]
) -> str:
    """ok: the route is the registry's champion and every replica that answers serves it;
    else why not."""
    if route is None:
        return "none routed"
    if not model_router.converged():
        return f"serving v{route.version}, champion is v{model_router.champion_version}"
    lacking = sorted(url for url, names in served.items() if route.served_name not in names)
    if lacking:
        where = "" if len(model_router.replicas.all) == 1 else f" at {', '.join(lacking)}"
        return f"{route.served_name} not loaded in vLLM{where}"
    return "ok"


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"description": "Prometheus text format"}},
)
async def metrics(request: Request) -> Response:
    m = request.app.state.metrics
    m.backlog.set(len(request.app.state.outbox))
    route = request.app.state.router.current  # read at scrape time: right after a switch too
    if route is not None:
        m.model_version.set(float(route.version))
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
