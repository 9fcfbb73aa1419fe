"""The vLLM OpenAI-compatible server, run from its own venv, with runtime LoRA loading on.

Adapters come from the registry, not from a disk shared with the gateway: refinery's vLLM
plugin (``refinery.vllm_plugin``) resolves a name like ``refinery-model-v3`` through
MLflow into this replica's own cache the first time a request names it.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import httpx

from refinery.common.exceptions import ConfigError
from refinery.common.settings import Settings
from refinery.stack.ports import replica_name
from refinery.stack.process import ManagedProcess
from refinery.vllm_plugin.spin import ENV as SPIN_ENV

#: vLLM's spin after a message on the CPU backend (Settings.vllm_spin_s)
CPU_SPIN_S = 0.01

# vLLM accepts only these LoRA ranks for --max-lora-rank.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def vllm_healthy(url: str) -> bool:
    return httpx.get(f"{url}/health", timeout=2.0).status_code == 200


def adapter_cache_dir(settings: Settings, replica: int = 0) -> Path:
    """Where vLLM replica ``replica`` keeps the adapters it fetched."""
    return settings.var_dir / "vllm" / f"adapters-{settings.vllm_port + replica}"


def _max_model_len(model_dir: Path, wanted: int) -> int:
    """The configured length, capped by what the model's positions allow."""
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return wanted
    return min(wanted, int(config.get("max_position_embeddings", wanted)))


def vllm_process(
    settings: Settings,
    model_dir: Path | None = None,
    base_version: str | None = None,
    replica: int = 0,
) -> ManagedProcess:
    """Replica ``replica`` (on ``vllm_port + replica``): serve ``model_dir`` (registry
    version ``base_version``, when known) under ``settings.served_model_name``; adapters
    load at runtime, fetched from the registry.

    Without ``model_dir`` the handle can check and stop a running server but not start one.
    """
    if model_dir is not None and settings.vllm_max_lora_rank not in VLLM_LORA_RANKS:
        raise ConfigError(
            f"REFINERY_VLLM_MAX_LORA_RANK={settings.vllm_max_lora_rank} is not one vLLM "
            f"accepts; use one of {VLLM_LORA_RANKS}"
        )
    env = {
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1",
        # refinery.vllm_plugin: where adapters come from, and where this replica keeps them
        "REFINERY_MLFLOW_URI": settings.mlflow_uri,
        "REFINERY_REGISTERED_MODEL": settings.registered_model,
        "REFINERY_ADAPTER_CACHE_DIR": str(adapter_cache_dir(settings, replica)),
        "REFINERY_SERVED_BASE_VERSION": base_version or "",
    }
    lora = [
        *("--enable-lora", "--max-loras", str(settings.vllm_max_loras)),
        *("--max-lora-rank", str(settings.vllm_max_lora_rank)),
    ]
    return _server(
        settings,
        replica_name("vllm", replica),
        settings.vllm_port + replica,
        model_dir,
        settings.served_model_name,
        lora,
        env,
    )


def merged_url(settings: Settings, slot: int) -> str:
    """Where gateways reach blue/green slot ``slot``: the URL the deployer tags."""
    return slot_url(settings, slot, settings.vllm_merged_host)


def slot_url(settings: Settings, slot: int, host: str | None = None) -> str:
    """Slot ``slot`` at ``host``; None: on this host, where the deployer looks at it."""
    host = host or connect_host(settings.vllm_host)
    return f"http://{host}:{settings.vllm_merged_port + slot}"


def connect_host(bind_host: str) -> str:
    """The host to connect to a server bound to ``bind_host`` on this machine (every
    interface, IPv4 or dual-stack: the loopback)."""
    return "127.0.0.1" if bind_host in ("0.0.0.0", "::", "") else bind_host


def vllm_python(settings: Settings) -> Path:
    """The python that runs vLLM: REFINERY_VLLM_PYTHON (infra/setup.sh's venv), else this
    one where it has vLLM (the deployer's container image is vLLM's, refinery added)."""
    if settings.vllm_python is not None and Path(settings.vllm_python).exists():
        return Path(settings.vllm_python)
    if settings.vllm_python is None and importlib.util.find_spec("vllm") is not None:
        return Path(sys.executable)
    raise ConfigError(
        f"REFINERY_VLLM_PYTHON={settings.vllm_python} is not a python of the vLLM venv; "
        "run `make setup` (infra/setup.sh builds it and records the path)"
    )


def merged_vllm_process(
    settings: Settings, slot: int, model_dir: Path | None = None, served_name: str = ""
) -> ManagedProcess:
    """Blue/green slot ``slot`` (0 or 1, on ``vllm_merged_port + slot``): a champion's
    merged weights (refinery/deployer) under its own served name, without LoRA, so it
    serves at the base model's speed."""
    return _server(
        settings,
        f"vllm-merged-{slot}",
        settings.vllm_merged_port + slot,
        model_dir,
        served_name,
        [],
        {"VLLM_CPU_OMP_THREADS_BIND": settings.vllm_merged_cpu_bind},
    )


def _server(
    settings: Settings,
    name: str,
    port: int,
    model_dir: Path | None,
    served_name: str,
    extra_args: list[str],
    extra_env: dict[str, str],
) -> ManagedProcess:
    url = f"http://{connect_host(settings.vllm_host)}:{port}"
    if model_dir is None:
        return ManagedProcess(
            name=name,
            argv=[],
            run_dir=settings.run_dir,
            log_dir=settings.log_dir,
            health=lambda: vllm_healthy(url),
        )
    python = vllm_python(settings)
    env = {"HF_HUB_OFFLINE": "1", **extra_env}
    spin = settings.vllm_spin_s
    if spin is None and settings.vllm_backend == "cpu":
        spin = CPU_SPIN_S
    if spin is not None:
        env[SPIN_ENV] = str(spin)
    argv = [
        str(python),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir.resolve()),
        "--served-model-name",
        served_name,
        "--host",
        settings.vllm_host,
        "--port",
        str(port),
        "--max-model-len",
        str(_max_model_len(model_dir, settings.vllm_max_model_len)),
        *extra_args,
        "--generation-config",
        "vllm",  # sampling defaults come from the request, not the model's folder
    ]
    if settings.vllm_backend == "cpu":
        argv += ["--dtype", "float32", "--enforce-eager"]
        env["VLLM_CPU_KVCACHE_SPACE"] = str(settings.vllm_kvcache_gib)
    else:  # the model's own dtype (bf16 where the GPU has it); room left for a retraining
        argv += ["--dtype", "auto"]
        argv += ["--gpu-memory-utilization", str(settings.vllm_gpu_memory_utilization)]
    return ManagedProcess(
        name=name,
        argv=argv,
        run_dir=settings.run_dir,
        log_dir=settings.log_dir,
        ports={name: port},
        health=lambda: vllm_healthy(url),
        env=env,
        startup_timeout_s=300,
    )
