"""Signed prediction ids: feedback can be checked without a lookup, and cannot be forged."""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid

_ID = re.compile(r"^(cmpl|chatcmpl)-([0-9a-f]{32})-([0-9a-f]{20})$")


class PredictionIds:
    """Makes ``<kind>-<uuid hex>-<hmac>`` ids and verifies them."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the signing secret must be at least 16 bytes")
        self._secret = secret

    def _sign(self, kind: str, body: str) -> str:
        return hmac.new(self._secret, f"{kind}-{body}".encode(), hashlib.sha256).hexdigest()[:20]

    def new(self, kind: str = "cmpl") -> str:
        body = uuid.uuid4().hex
        return f"{kind}-{body}-{self._sign(kind, body)}"

    def is_valid(self, prediction_id: str) -> bool:
        match = _ID.match(prediction_id)
        if match is None:
            return False
        kind, body, signature = match.groups()
        return hmac.compare_digest(signature, self._sign(kind, body))
