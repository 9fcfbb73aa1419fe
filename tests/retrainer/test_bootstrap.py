"""``refinery bootstrap`` against the real MLflow server: version 1, alias champion, lineage."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from refinery.common.datasets import LabeledText, read_jsonl, write_jsonl
from refinery.common.registry import ModelRegistry
from refinery.common.settings import Settings
from tests.conftest import run_cli


def test_bootstrap_registers_version_1_as_champion(bootstrapped: Settings) -> None:
    registry = ModelRegistry(bootstrapped)
    champion = registry.champion()
    assert champion is not None
    assert champion.version == "1"
    assert champion.kind == "base"
    assert champion.served_name == f"{bootstrapped.registered_model}-v1"
    assert champion.tags["base_model"] == "builtin:tiny-llama"

    run = MlflowClient(bootstrapped.mlflow_uri).get_run(champion.run_id)
    assert run.data.metrics["golden_accuracy"] > 0.6  # 5 labels: chance is about 0.25
    assert int(run.data.params["train_examples"]) > 500
    files = {
        f.path
        for f in MlflowClient(bootstrapped.mlflow_uri).list_artifacts(champion.run_id, "model")
    }
    assert {"model/config.json", "model/model.safetensors", "model/tokenizer.json"} <= files


def test_golden_set_is_stored_and_never_trained_on(bootstrapped: Settings, tmp_path: Path) -> None:
    champion = ModelRegistry(bootstrapped).champion()
    assert champion is not None
    mlflow.set_tracking_uri(bootstrapped.mlflow_uri)
    golden = read_jsonl(
        Path(
            mlflow.artifacts.download_artifacts(champion.tags["golden_uri"], dst_path=str(tmp_path))
        )
    )
    train = read_jsonl(
        Path(
            mlflow.artifacts.download_artifacts(
                champion.tags["seed_train_uri"], dst_path=str(tmp_path)
            )
        )
    )
    assert len(golden) == 120
    assert not {e.prompt for e in golden} & {e.prompt for e in train}


def test_second_bootstrap_is_a_no_op(bootstrapped: Settings) -> None:
    client = MlflowClient(bootstrapped.mlflow_uri)
    query = f"name='{bootstrapped.registered_model}'"
    before = len(client.search_model_versions(query))
    done = run_cli(bootstrapped, "bootstrap")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "already has champion v1" in done.stdout
    assert len(client.search_model_versions(query)) == before


def test_bootstrap_from_a_users_model_and_data(bootstrapped: Settings, tmp_path: Path) -> None:
    """--base takes any Hugging Face path or id; here a local folder, since nothing downloads."""
    registry = ModelRegistry(bootstrapped)
    champion = registry.champion()
    assert champion is not None
    user_model = registry.local_copy(champion, tmp_path / "models")
    items = ["order", "jacket", "blender", "lamp", "sofa", "kettle", "scarf", "drill", "tent"]
    kinds = ["refund my", "charged twice for my", "invoice wrong for my"]
    train = [
        LabeledText(prompt=f"Ticket: {kind} {item}\nTeam:", completion=" billing")
        for kind in kinds
        for item in items[:7]
    ][:20]
    golden = [
        LabeledText(
            prompt="Ticket: where is my parcel\nTeam:", completion=" shipping", segment="retail"
        )
    ]
    write_jsonl(tmp_path / "train.jsonl", train)
    write_jsonl(tmp_path / "golden.jsonl", golden)
    user = bootstrapped.model_copy(update={"registered_model": "user-model"})

    done = run_cli(
        user,
        "bootstrap",
        "--base",
        str(user_model),
        "--train",
        str(tmp_path / "train.jsonl"),
        "--golden",
        str(tmp_path / "golden.jsonl"),
    )
    assert done.returncode == 0, done.stderr[-3000:]

    # The user's model is the base (v1); a LoRA fine-tuned on --train is the champion (v2).
    user_registry = ModelRegistry(user)
    mine = user_registry.champion()
    assert mine is not None and (mine.version, mine.kind, mine.base_version) == ("2", "lora", "1")
    base = user_registry.get("1")
    assert base.kind == "base" and base.tags["base_model"] == str(user_model)
    assert mine.tags["golden_uri"] == base.tags["golden_uri"]
    mlflow.set_tracking_uri(user.mlflow_uri)
    stored = Path(
        mlflow.artifacts.download_artifacts(mine.tags["golden_uri"], dst_path=str(tmp_path / "g"))
    )
    assert read_jsonl(stored) == golden
    run = MlflowClient(user.mlflow_uri).get_run(base.run_id)
    assert run.data.params["train_examples"] == "20"
    adapter_run = MlflowClient(user.mlflow_uri).get_run(mine.run_id)
    assert "golden_score" in adapter_run.data.metrics


def test_bad_training_file_is_a_clear_error(bootstrapped: Settings, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"prompt": "ok", "completion": " x"}) + "\n" + '{"prompt": "no completion"}\n'
    )
    user = bootstrapped.model_copy(update={"registered_model": "bad-data-model"})
    done = run_cli(user, "bootstrap", "--train", str(bad))
    assert done.returncode == 2
    assert f"{bad}:2" in done.stderr and "completion" in done.stderr
