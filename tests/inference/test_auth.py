"""API keys, tenant-bound prediction ids and rate limits as plain logic (the gateway tests
cover them over HTTP)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from refinery.common.exceptions import ConfigError
from refinery.common.settings import Settings
from refinery.inference.auth import ApiKey, KeyRing, Scope, load_keys
from refinery.inference.exceptions import Forbidden, TooManyRequests, Unauthorized
from refinery.inference.ids import PredictionIds
from refinery.inference.ratelimit import RateLimiter

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


def test_keys_name_their_tenant_and_are_known_by_fingerprint(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("k3 feedback shop-2  # the second shop\nk4 inference+feedback\n")
    settings = Settings(
        var_dir=tmp_path,
        api_keys=SecretStr("k1:inference+feedback:shop-1,k2:admin"),
        api_keys_file=keys_file,
    )
    keys = {k.key: k for k in load_keys(settings)}
    assert {k: v.tenant for k, v in keys.items()} == {
        "k1": "shop-1",
        "k2": "default",
        "k3": "shop-2",
        "k4": "default",
    }
    assert keys["k1"].key_id != keys["k2"].key_id and "k1" not in keys["k1"].key_id
    assert KeyRing(keys.values()).tenants == ["default", "shop-1", "shop-2"]
    with pytest.raises(ConfigError, match="tenant 'a b'"):
        load_keys(Settings(var_dir=tmp_path, api_keys=SecretStr("k:feedback:a b")))


def test_an_id_verifies_only_for_its_tenant_and_says_when_it_was_issued() -> None:
    ids = PredictionIds(b"0123456789abcdef")
    pid = ids.new("cmpl", "shop-1", now=1_800_000_000)
    issued = ids.verify(pid, ["shop-1"])
    assert issued is not None and (issued.tenant, issued.issued_at) == ("shop-1", 1_800_000_000)
    assert ids.verify(pid, ["shop-2", "default"]) is None
    assert ids.verify(pid, ["default", "shop-1"]) == issued  # an admin tries every tenant
    assert ids.verify(pid.replace("cmpl", "chatcmpl", 1), ["shop-1"]) is None
    body = pid.split("-")[1]
    later = pid.replace(body, f"{1_900_000_000:08x}{body[8:]}")  # a forged issue time
    assert ids.verify(later, ["shop-1"]) is None
    assert PredictionIds(b"another secret!!").verify(pid, ["shop-1"]) is None


def test_the_rate_limit_is_a_bucket_per_key() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=2, burst=3, clock=lambda: now[0])
    for _ in range(3):
        limiter.take("flood")
    with pytest.raises(TooManyRequests, match="2 requests/s") as refused:
        limiter.take("flood")
    assert refused.value.retry_after_s == 1
    limiter.take("other")  # another key has its own budget
    now[0] = 0.5  # one token back after half a second at 2/s
    limiter.take("flood")
    with pytest.raises(TooManyRequests):
        limiter.take("flood")
    RateLimiter(rate=0, burst=1).take("anyone")  # 0: off
