"""Signed prediction ids: feedback can be checked without a lookup, and cannot be forged.

An id is ``<kind>-<body>-<signature>``: the body is 32 hex digits, the first 8 the time it
was issued (Unix seconds), the rest random; the signature is an HMAC of kind, body and the
tenant (the app) whose key asked. So an id can be rated only by a key of the same tenant,
and only for a while after it was issued: nobody rates answers they were never given.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass

_ID = re.compile(r"^(cmpl|chatcmpl)-([0-9a-f]{32})-([0-9a-f]{20})$")


@dataclass(frozen=True)
class IssuedId:
    """What a verified id says: who it was issued to, and when (Unix seconds)."""

    tenant: str
    issued_at: float


class PredictionIds:
    """Makes ``<kind>-<body>-<hmac>`` ids and verifies them."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the signing secret must be at least 16 bytes")
        self._secret = secret

    def _sign(self, kind: str, body: str, tenant: str) -> str:
        message = f"{kind}-{body}\x00{tenant}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:20]

    def new(self, kind: str, tenant: str, now: float | None = None) -> str:
        issued = int(time.time() if now is None else now)
        body = f"{issued:08x}{secrets.token_hex(12)}"
        return f"{kind}-{body}-{self._sign(kind, body, tenant)}"

    def verify(self, prediction_id: str, tenants: Iterable[str]) -> IssuedId | None:
        """The tenant among ``tenants`` the id was issued to, and when; None when it was
        issued to none of them (or not by this service)."""
        match = _ID.match(prediction_id)
        if match is None:
            return None
        kind, body, signature = match.groups()
        for tenant in tenants:
            if hmac.compare_digest(signature, self._sign(kind, body, tenant)):
                return IssuedId(tenant, float(int(body[:8], 16)))
        return None
