"""vLLM replicas take adapters from the MLflow registry over HTTP (refinery.vllm_plugin),
not from a disk they share with the gateway."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from refinery.common.registry import ModelRegistry, VersionInfo
from refinery.common.settings import Settings
from refinery.stack.vllm import adapter_cache_dir
from refinery.vllm_plugin.adapters import AdapterUnavailable, RegistryAdapters
from tests.inference.helpers import register_adapter


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".complete"
    }


@pytest.fixture(scope="module")
def adapter(full_stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> VersionInfo:
    """A LoRA version of base v1 that is neither champion nor canary: no gateway loads it."""
    work = tmp_path_factory.mktemp("adapter")
    registry = ModelRegistry(full_stack)
    return register_adapter(
        full_stack, registry.local_copy(registry.get("1"), work / "m"), work / "a"
    )


def test_an_adapter_is_fetched_through_mlflows_http_api(
    full_stack: Settings, adapter: VersionInfo, tmp_path: Path
) -> None:
    # The server holds the files; clients only ever see its HTTP proxy.
    assert adapter.source.startswith("mlflow-artifacts:"), adapter.source
    fetcher = RegistryAdapters(
        full_stack.mlflow_uri, full_stack.registered_model, tmp_path / "cache", base_version="1"
    )
    got = fetcher.fetch(adapter.served_name)
    expected = ModelRegistry(full_stack).local_copy(adapter, tmp_path / "mlflow-client")
    assert "adapter_config.json" in _files(got)
    assert _files(got) == _files(expected)
    assert fetcher.fetch(adapter.served_name) == got  # versions are immutable: cached

    model = full_stack.registered_model
    with pytest.raises(AdapterUnavailable, match="is a base version"):
        fetcher.fetch(f"{model}-v1")
    with pytest.raises(AdapterUnavailable, match="MLflow answered 404"):
        fetcher.fetch(f"{model}-v999")
    with pytest.raises(AdapterUnavailable, match="is not a version of"):
        fetcher.fetch("someone-else-v1")
    other_base = RegistryAdapters(
        full_stack.mlflow_uri, model, tmp_path / "other", base_version="7"
    )
    with pytest.raises(AdapterUnavailable, match="applies to base v1; this replica serves base v7"):
        other_base.fetch(adapter.served_name)


def test_requests_that_ask_for_a_new_adapter_together_fetch_it_once(
    full_stack: Settings, adapter: VersionInfo, tmp_path: Path
) -> None:
    """vLLM resolves a name once per request that asks for it: the first requests for a new
    champion arrive together (two fetches once cleared each other's download)."""
    fetcher = RegistryAdapters(full_stack.mlflow_uri, full_stack.registered_model, tmp_path)
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(fetcher.fetch, [adapter.served_name] * 4))
    assert len(set(got)) == 1 and "adapter_config.json" in _files(got[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == [adapter.served_name]  # no leftovers


def test_vllm_serves_a_registered_adapter_nobody_loaded_into_it(
    full_stack: Settings, adapter: VersionInfo
) -> None:
    cache = adapter_cache_dir(full_stack)
    url = full_stack.vllm_url
    body = {"prompt": "hello", "max_tokens": 2, "temperature": 0}
    try:
        resp = httpx.post(
            f"{url}/v1/completions", json={**body, "model": adapter.served_name}, timeout=120
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["model"] == adapter.served_name
        assert (cache / adapter.served_name / "adapter_config.json").exists()
        names = {m["id"] for m in httpx.get(f"{url}/v1/models", timeout=10).json()["data"]}
        assert adapter.served_name in names

        missing = httpx.post(
            f"{url}/v1/completions",
            json={**body, "model": f"{full_stack.registered_model}-v999"},
            timeout=60,
        )
        assert missing.status_code == 404, missing.text
    finally:
        httpx.post(
            f"{url}/v1/unload_lora_adapter", json={"lora_name": adapter.served_name}, timeout=60
        )
