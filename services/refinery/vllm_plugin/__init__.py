"""A vLLM plugin: each replica resolves ``refinery-model-vN`` from the MLflow registry itself.

vLLM asks its LoRA resolvers for a model name it does not know (with
``VLLM_ALLOW_RUNTIME_LORA_UPDATING``); this one fetches the version's adapter through
MLflow (``adapters.RegistryAdapters``). So no replica shares a disk with the gateway, and a
replica that restarts serves the champion again on the first request that names it.

Installed into vLLM's venv as the ``vllm.general_plugins`` entry point ``refinery`` (the
refinery distribution, ``--no-deps``: this package needs only the standard library and
vLLM). Inactive unless ``REFINERY_MLFLOW_URI`` is set, so a vLLM started for anything
else is unchanged. Environment: ``REFINERY_MLFLOW_URI``, ``REFINERY_REGISTERED_MODEL``,
``REFINERY_ADAPTER_CACHE_DIR`` (this replica's cache), ``REFINERY_SERVED_BASE_VERSION``
(adapters for another base are refused), ``MLFLOW_TRACKING_TOKEN`` (optional bearer).
``REFINERY_VLLM_SPIN_S`` (spin.py) applies to any vLLM it is installed in.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from refinery.vllm_plugin.adapters import AdapterUnavailable, RegistryAdapters
from refinery.vllm_plugin.spin import limit_spin

log = logging.getLogger("vllm.refinery")

RESOLVER_NAME = "refinery-registry"


def adapters_from_env() -> RegistryAdapters | None:
    uri = os.environ.get("REFINERY_MLFLOW_URI")
    if not uri:
        return None
    cache = os.environ.get("REFINERY_ADAPTER_CACHE_DIR") or str(
        Path(tempfile.gettempdir()) / "refinery-adapters"
    )
    return RegistryAdapters(
        uri,
        os.environ.get("REFINERY_REGISTERED_MODEL", "refinery-model"),
        Path(cache),
        base_version=os.environ.get("REFINERY_SERVED_BASE_VERSION") or None,
    )


def register() -> None:
    """vLLM's entry point (called in each of its processes; registering twice is harmless)."""
    limit_spin()
    found = adapters_from_env()
    if found is None:
        return
    adapters: RegistryAdapters = found
    from vllm.lora.request import LoRARequest  # type: ignore[import-not-found]
    from vllm.lora.resolver import (  # type: ignore[import-not-found]
        LoRAResolver,
        LoRAResolverRegistry,
    )

    class RegistryResolver(LoRAResolver):  # type: ignore[misc]
        async def resolve_lora(self, base_model_name: str, lora_name: str) -> Any:
            if adapters.version_of(lora_name) is None:
                return None
            try:
                path = await asyncio.to_thread(adapters.fetch, lora_name)
            except AdapterUnavailable as exc:
                log.warning("refinery: cannot serve %s: %s", lora_name, exc)
                return None
            # vLLM replaces the id with its own counter before loading.
            return LoRARequest(lora_name=lora_name, lora_int_id=1, lora_path=str(path))

    LoRAResolverRegistry.register_resolver(RESOLVER_NAME, RegistryResolver())
