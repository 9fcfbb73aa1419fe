"""API key checks as plain logic (the gateway tests cover them over HTTP)."""

from __future__ import annotations

import pytest

from services.inference.auth import ApiKey, KeyRing, Scope
from services.inference.exceptions import Forbidden, Unauthorized

RING = KeyRing([ApiKey("s3cret", frozenset({Scope.FEEDBACK}))])


@pytest.mark.parametrize("token", ["clé", "s3cret\u00e9", "\u2603", "s3cre"])
def test_a_wrong_key_is_unauthorized_whatever_its_characters(token: str) -> None:
    with pytest.raises(Unauthorized, match="unknown API key"):
        RING.check(f"Bearer {token}", Scope.FEEDBACK)


def test_scopes_and_missing_keys() -> None:
    RING.check("Bearer s3cret", Scope.FEEDBACK)
    with pytest.raises(Forbidden, match="inference"):
        RING.check("Bearer s3cret", Scope.INFERENCE)
    with pytest.raises(Unauthorized, match="missing API key"):
        RING.check(None, Scope.FEEDBACK)
