"""SFT vs KTO on the same feedback, one run: both trained from the same base on the data of
one retraining run (its ``data/`` artifacts in MLflow: train, validation, recent test), with
the task file's training spec, then scored by the gate's metric on the run's recent test
set (per segment) and on the golden set.

    python -m bench.methods --run <mlflow run id> [--task tasks/reply.yaml]

The run must be a retraining run of the current stack (``refinery status`` names its
MLflow); the base is the champion's base model in the registry. KTO also learns from the
thumbs-down answers without a correction, which SFT skips.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import fields
from datetime import datetime
from pathlib import Path
from typing import Any

from refinery.common.datasets import read_jsonl
from refinery.common.events import ChatTurn
from refinery.common.registry import ModelRegistry
from refinery.common.settings import get_settings
from refinery.common.task import TaskFile, load_task
from refinery.retrainer.base_model import greedy_complete
from refinery.retrainer.evaluation import score_outputs
from refinery.retrainer.examples import TrainingExample
from refinery.retrainer.gate import main_metric
from refinery.retrainer.sequence import prompt_ids
from refinery.retrainer.training import train


def _examples(path: Path) -> list[TrainingExample]:
    names = {f.name for f in fields(TrainingExample)}
    out = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        row["at"] = datetime.fromisoformat(row["at"]) if row.get("at") else None
        if row.get("messages"):
            row["messages"] = tuple(ChatTurn(**m) for m in row["messages"])
        out.append(TrainingExample(**{k: v for k, v in row.items() if k in names}))
    return out


def _score(
    task: TaskFile,
    model: Any,
    tokenizer: Any,
    items: Sequence[tuple[str, str, str | None, tuple[ChatTurn, ...] | None]],
) -> dict[str, float]:
    """The gate's per-item metric, averaged overall and per segment (0-1)."""
    ids = [prompt_ids(tokenizer, p, m) for p, _, _, m in items]
    outputs = greedy_complete(model, tokenizer, ids, task.task.max_new_tokens)
    scored = score_outputs(
        task.task,
        [p for p, _, _, _ in items],
        [t for _, t, _, _ in items],
        outputs,
        [s for _, _, s, _ in items],
        metric=main_metric(task),
    )
    result = {"all": sum(s.score for s in scored) / len(scored)}
    for segment in sorted({s.segment or "-" for s in scored}):
        mine = [s.score for s in scored if (s.segment or "-") == segment]
        result[segment] = sum(mine) / len(mine)
    return result


def main() -> None:
    import mlflow
    from transformers import AutoTokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="MLflow run id of a retraining run")
    parser.add_argument("--task", type=Path, default=None, help="task file (default: settings)")
    args = parser.parse_args()
    settings = get_settings()
    task = load_task(args.task or settings.task_file)
    mlflow.set_tracking_uri(settings.mlflow_uri)
    work = Path(tempfile.mkdtemp(prefix="refinery-methods-"))
    data = Path(
        mlflow.artifacts.download_artifacts(
            run_id=args.run, artifact_path="data", dst_path=str(work)
        )
    )
    train_set = _examples(data / "train.jsonl")
    validation = _examples(data / "validation.jsonl")
    recent = _examples(data / "recent_test.jsonl")
    registry = ModelRegistry(settings)
    champion = registry.champion()
    if champion is None:
        raise SystemExit("no champion in the registry: bootstrap first")
    base = registry.serving_base(champion)
    base_dir = registry.local_copy(base, work / "models")
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    golden_file = mlflow.artifacts.download_artifacts(
        artifact_uri=base.tags["golden_uri"], dst_path=str(work / "golden")
    )
    golden = [
        (g.prompt, g.completion, g.segment, g.messages) for g in read_jsonl(Path(golden_file))
    ]
    recent_items = [(e.prompt, e.target, e.segment, e.messages) for e in recent]
    negatives = sum(not e.positive for e in train_set)
    print(
        f"run {args.run}: {len(train_set)} training examples ({negatives} thumbs-down without "
        f"a correction), {len(recent)} recent test, {len(golden)} golden; metric "
        f"{main_metric(task)}"
    )
    for method in ("sft", "kto"):
        spec = task.training.model_copy(update={"method": method})
        started = time.monotonic()
        result = train(base_dir, tokenizer, train_set, validation, spec, work / method)
        model = result.model
        model.eval()
        seconds = time.monotonic() - started
        on_recent = _score(task, model, tokenizer, recent_items)
        on_golden = _score(task, model, tokenizer, golden)
        parts = ", ".join(f"{k} {v:.3f}" for k, v in on_recent.items())
        print(
            f"{method}: recent test {parts}; golden {on_golden['all']:.3f}; "
            f"trained in {seconds:.0f} s"
        )


if __name__ == "__main__":
    main()
