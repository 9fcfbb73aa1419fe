"""API keys with scopes: ``inference``, ``feedback`` and ``admin`` (which implies both).

Each key belongs to a tenant (the app it was issued to; ``default`` unless named): the ids
of the answers a tenant's keys got can be rated only by keys of that tenant. A key is known
downstream by its fingerprint (``key_id``), never by its value, so feedback can be traced
to the key that sent it and capped per key (refinery/retrainer/sources.py).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from refinery.common.exceptions import ConfigError
from refinery.common.settings import Settings
from refinery.inference.exceptions import Forbidden, Unauthorized


class Scope(StrEnum):
    INFERENCE = "inference"
    FEEDBACK = "feedback"
    ADMIN = "admin"


DEFAULT_TENANT = "default"


@dataclass(frozen=True)
class ApiKey:
    key: str
    scopes: frozenset[Scope]
    tenant: str = DEFAULT_TENANT

    def allows(self, scope: Scope) -> bool:
        return Scope.ADMIN in self.scopes or scope in self.scopes

    @property
    def key_id(self) -> str:
        """The key's fingerprint: names it in events and logs without revealing it."""
        return hashlib.sha256(self.key.encode()).hexdigest()[:12]


# Who calls when REFINERY_AUTH_DISABLED is set (local use only): an admin of the default tenant.
ANONYMOUS = ApiKey("", frozenset({Scope.ADMIN}))


def _parse_scopes(text: str, where: str) -> frozenset[Scope]:
    try:
        return frozenset(Scope(s.strip()) for s in text.replace(",", "+").split("+") if s.strip())
    except ValueError:
        raise ConfigError(
            f"{where}: unknown scope in {text!r}; use inference, feedback, admin joined by '+'"
        ) from None


def _parse_key(key: str, scopes: str, tenant: str, where: str) -> ApiKey:
    tenant = tenant.strip() or DEFAULT_TENANT
    if not tenant.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"{where}: tenant {tenant!r} must be letters, digits, '-' or '_'")
    return ApiKey(key, _parse_scopes(scopes or "admin", where), tenant)


def load_keys(settings: Settings) -> list[ApiKey]:
    """Keys from REFINERY_API_KEYS (``key:scopes[:tenant]``, comma-separated), the keys file
    (``key scopes [tenant]`` per line), and the local admin key `refinery up` made."""
    keys: list[ApiKey] = []
    if settings.api_keys is not None:
        for item in settings.api_keys.get_secret_value().split(","):
            key, _, rest = item.strip().partition(":")
            scopes, _, tenant = rest.partition(":")
            if key:
                keys.append(_parse_key(key, scopes, tenant, "REFINERY_API_KEYS"))
    keys_file = settings.api_keys_path
    if keys_file.exists():
        for number, line in enumerate(keys_file.read_text().splitlines(), start=1):
            line = line.split("#", 1)[0].strip()
            if line:
                key, scopes, tenant = [*line.split(None, 2), "", ""][:3]
                keys.append(_parse_key(key, scopes, tenant, f"{keys_file}:{number}"))
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

    @property
    def tenants(self) -> list[str]:
        """Every tenant a key is configured for (an admin may rate any tenant's answers)."""
        return sorted({k.tenant for k in self.keys} | {DEFAULT_TENANT})

    def check(self, authorization: str | None, scope: Scope) -> ApiKey:
        """The key the bearer token names, when it has ``scope``; raises otherwise."""
        if self.disabled:
            return ANONYMOUS
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
        return found
