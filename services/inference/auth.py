"""API keys with scopes: ``inference``, ``feedback`` and ``admin`` (which implies both)."""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from services.common.exceptions import ConfigError
from services.common.settings import Settings
from services.inference.exceptions import Forbidden, Unauthorized


class Scope(StrEnum):
    INFERENCE = "inference"
    FEEDBACK = "feedback"
    ADMIN = "admin"


@dataclass(frozen=True)
class ApiKey:
    key: str
    scopes: frozenset[Scope]

    def allows(self, scope: Scope) -> bool:
        return Scope.ADMIN in self.scopes or scope in self.scopes


def _parse_scopes(text: str, where: str) -> frozenset[Scope]:
    try:
        return frozenset(Scope(s.strip()) for s in text.replace(",", "+").split("+") if s.strip())
    except ValueError:
        raise ConfigError(
            f"{where}: unknown scope in {text!r}; use inference, feedback, admin joined by '+'"
        ) from None


def load_keys(settings: Settings) -> list[ApiKey]:
    """Keys from REFINERY_API_KEYS, the keys file, and the local admin key `refinery up` made."""
    keys: list[ApiKey] = []
    if settings.api_keys is not None:
        for item in settings.api_keys.get_secret_value().split(","):
            key, _, scopes = item.strip().partition(":")
            if key:
                keys.append(ApiKey(key, _parse_scopes(scopes or "admin", "REFINERY_API_KEYS")))
    keys_file = settings.api_keys_path
    if keys_file.exists():
        for number, line in enumerate(keys_file.read_text().splitlines(), start=1):
            line = line.split("#", 1)[0].strip()
            if line:
                key, _, scopes = line.partition(" ")
                keys.append(ApiKey(key, _parse_scopes(scopes or "admin", f"{keys_file}:{number}")))
    local = settings.admin_key_path
    if local.exists():
        keys.append(ApiKey(local.read_text().strip(), frozenset({Scope.ADMIN})))
    return keys


class KeyRing:
    """Checks a bearer token against the configured keys in constant time."""

    def __init__(self, keys: Iterable[ApiKey], disabled: bool = False) -> None:
        self.keys = list(keys)
        self.disabled = disabled
        if not self.keys and not disabled:
            raise ConfigError(
                "no API keys configured: set REFINERY_API_KEYS, write REFINERY_API_KEYS_FILE, "
                "run `refinery up` (creates var/secrets/api-key), or set "
                "REFINERY_AUTH_DISABLED=true for local use only"
            )

    def check(self, authorization: str | None, scope: Scope) -> None:
        if self.disabled:
            return
        if not authorization or not authorization.startswith("Bearer "):
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        # Bytes, not str: compare_digest refuses non-ASCII str, and a client may send any
        # header bytes (the server decodes them as latin-1).
        token = authorization.removeprefix("Bearer ").strip().encode()
        found = next((k for k in self.keys if hmac.compare_digest(k.key.encode(), token)), None)
        if found is None:
            raise Unauthorized("unknown API key")
        if not found.allows(scope):
            raise Forbidden(f"this API key lacks the '{scope}' scope")
