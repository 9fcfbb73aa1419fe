"""Route dependencies: the services on app.state, and scope checks.

All are ``async def``: FastAPI runs a plain ``def`` dependency in its thread pool, a thread
hop per dependency per request (a tenth of the gateway's time under load, by py-spy).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Header, Request

from refinery.inference.auth import ApiKey, KeyRing, Scope
from refinery.inference.feedback import FeedbackService
from refinery.inference.ratelimit import RateLimiter
from refinery.inference.serving import CompletionService


def require(scope: Scope) -> Callable[..., Coroutine[Any, Any, None]]:
    """The route's scope check, then the key's rate limit (admin keys are not limited); the
    key is kept on the request for the handler (``Caller``)."""

    async def check(
        request: Request, authorization: Annotated[str | None, Header()] = None
    ) -> None:
        keyring: KeyRing = request.app.state.keyring
        key = keyring.check(authorization, scope)
        if not key.allows(Scope.ADMIN):
            limiter: RateLimiter = request.app.state.rate_limiter
            limiter.take(key.key_id)
        request.state.api_key = key

    return check


async def _caller(request: Request) -> ApiKey:
    return request.state.api_key  # type: ignore[no-any-return]


async def _completions(request: Request) -> CompletionService:
    return request.app.state.completions  # type: ignore[no-any-return]


async def _feedback(request: Request) -> FeedbackService:
    return request.app.state.feedback  # type: ignore[no-any-return]


Caller = Annotated[ApiKey, Depends(_caller)]
Completions = Annotated[CompletionService, Depends(_completions)]
Feedback = Annotated[FeedbackService, Depends(_feedback)]
InferenceScope = Depends(require(Scope.INFERENCE))
FeedbackScope = Depends(require(Scope.FEEDBACK))
