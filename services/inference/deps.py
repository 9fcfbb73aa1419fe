"""Route dependencies: the services on app.state, and scope checks."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Header, Request

from services.inference.auth import KeyRing, Scope
from services.inference.feedback import FeedbackService
from services.inference.serving import CompletionService


def require(scope: Scope) -> Callable[..., Coroutine[Any, Any, None]]:
    async def check(
        request: Request, authorization: Annotated[str | None, Header()] = None
    ) -> None:
        keyring: KeyRing = request.app.state.keyring
        keyring.check(authorization, scope)

    return check


def _completions(request: Request) -> CompletionService:
    return request.app.state.completions  # type: ignore[no-any-return]


def _feedback(request: Request) -> FeedbackService:
    return request.app.state.feedback  # type: ignore[no-any-return]


Completions = Annotated[CompletionService, Depends(_completions)]
Feedback = Annotated[FeedbackService, Depends(_feedback)]
InferenceScope = Depends(require(Scope.INFERENCE))
FeedbackScope = Depends(require(Scope.FEEDBACK))
