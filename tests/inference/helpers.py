"""Reading what the gateway wrote to Kafka, and adapters to serve, for the serving tests."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import mlflow
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from refinery.common.events import Event
from refinery.common.kafka import EventConsumer
from refinery.common.registry import ModelRegistry, VersionInfo
from refinery.common.settings import Settings
from refinery.common.topics import Stream


def register_adapter(
    settings: Settings, base_dir: Path, out: Path, identity: bool = False
) -> VersionInfo:
    """A LoRA version of base v1 in the registry: random weights (answers unlike the base's,
    mostly wrong), or with ``identity`` zero ones (answers exactly as the base does)."""
    torch.manual_seed(5)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        init_lora_weights=identity,
        target_modules=["q_proj", "v_proj", "o_proj"],
    )
    get_peft_model(model, config).save_pretrained(str(out))
    mlflow.set_tracking_uri(settings.mlflow_uri)
    mlflow.set_experiment(settings.experiment)
    with mlflow.start_run(run_name="test-adapter") as run:
        mlflow.log_artifacts(str(out), "adapter")
    return ModelRegistry(settings).register(
        f"{run.info.artifact_uri}/adapter",
        run.info.run_id,
        tags={"kind": "lora", "base_version": "1"},
    )


def read_events(
    settings: Settings, stream: Stream, want: set[str], key: str, timeout_s: float = 60
) -> list[Event]:
    """All events of ``stream`` whose ``key`` attribute is in ``want`` (duplicates kept)."""
    found: list[Event] = []
    seen: set[str] = set()
    with EventConsumer(settings, [stream], group_id=f"test-{uuid.uuid4()}") as consumer:
        deadline = time.monotonic() + timeout_s
        idle_polls = 0
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=500)
            idle_polls = 0 if batch else idle_polls + 1
            for item in batch:
                value = getattr(item.event, key)
                if value in want:
                    found.append(item.event)
                    seen.add(value)
            if seen >= want and idle_polls >= 2:
                break
    return found
