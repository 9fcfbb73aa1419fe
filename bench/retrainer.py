"""Retraining throughput, one run: training examples/s of the retrainer's SFT step
(LoRA, target-only loss, validation, checkpoints, early-stopping bookkeeping) vs the same
model, LoRA and tokenized data through a plain transformers ``Trainer`` loop (no
evaluation, no checkpoints, no callbacks); then how its time grows with 1x, 2x, 4x
examples. Early stopping is off here so both run the same number of epochs.

A run of 1,000 examples takes a few seconds, where this host's noise alone moves a rate by
a fifth (0.83x, 1.12x and 1.03x in three single runs of the same code): the two loops
take turns (``--turns``, the order swapped each turn) and the medians are compared.

Needs no stack: the base is the offline model's architecture at random initialisation
(throughput does not depend on the weights).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from peft import get_peft_model
from transformers import Trainer, TrainingArguments

from bench.quiet import without_retraining
from bench.report import Figure, record
from refinery.common.settings import REPO_ROOT, get_settings
from refinery.common.task import load_task
from refinery.demo.corpus import generate
from refinery.retrainer.base_model import build_model, train_tokenizer
from refinery.retrainer.examples import TrainingExample, from_seed
from refinery.retrainer.sequence import PadCollator, build_dataset
from refinery.retrainer.training import lora_config, train_sft


def examples(n: int) -> list[TrainingExample]:
    task = load_task(REPO_ROOT / "refinery.yaml").task
    half = n // 2
    return [
        from_seed(e)
        for e in generate(task, half, seed=5)
        + generate(task, n - half, seed=6, domain="smart_home")
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--turns", type=int, default=5, help="runs of each loop, alternated")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    task = load_task(REPO_ROOT / "refinery.yaml")
    spec = task.training.model_copy(
        update={"epochs": args.epochs, "early_stopping_patience": 1000, "max_train_seconds": 3600}
    )
    corpus = examples(args.examples * 4)
    tokenizer = train_tokenizer([e.prompt + e.target for e in corpus], task.base_model.vocab_size)
    with (
        without_retraining(get_settings()),  # a stack's retrainer would share these cores
        tempfile.TemporaryDirectory(prefix="refinery-bench-") as tmp,
    ):
        base_dir = Path(tmp) / "base"
        build_model(task.base_model, tokenizer, seed=0).save_pretrained(base_dir)
        tokenizer.save_pretrained(base_dir)
        data = corpus[: args.examples]
        validation = corpus[-100:]

        train_set = build_dataset(
            tokenizer, [(e.prompt, e.target, e.messages) for e in data], spec.max_seq_len
        )

        def plain_loop(turn: int) -> float:
            """The plain loop: same LoRA, same sequences, nothing else."""
            model = get_peft_model(
                build_model(task.base_model, tokenizer, seed=0), lora_config(spec)
            )
            trainer = Trainer(
                model=model,
                args=TrainingArguments(
                    output_dir=str(Path(tmp) / f"plain-{turn}"),
                    num_train_epochs=spec.epochs,
                    per_device_train_batch_size=spec.batch_size,
                    learning_rate=spec.learning_rate,
                    save_strategy="no",
                    eval_strategy="no",
                    report_to="none",
                    disable_tqdm=True,
                    logging_strategy="no",
                    dataloader_pin_memory=False,
                ),
                train_dataset=train_set,
                data_collator=PadCollator(int(tokenizer.pad_token_id or 0)),
            )
            started = time.monotonic()
            trainer.train()
            return len(train_set) * spec.epochs / (time.monotonic() - started)

        def ours(subset: list[TrainingExample], name: str) -> tuple[float, float]:
            """The retrainer's SFT step: (examples/s while training, wall s with load, save)."""
            t0 = time.monotonic()
            result = train_sft(base_dir, tokenizer, subset, validation, spec, Path(tmp) / name)
            return result.examples_per_s, time.monotonic() - t0

        plain_rates: list[float] = []
        our_runs: list[tuple[float, float]] = []  # (examples/s, wall s) at 1x
        loops: list[Callable[[int], None]] = [
            lambda turn: plain_rates.append(plain_loop(turn)),
            lambda turn: our_runs.append(ours(data, f"ours-1x-{turn}")),
        ]
        for turn in range(args.turns):
            for loop in reversed(loops) if turn % 2 else loops:  # neither always starts first
                loop(turn)
        our_rates = [rate for rate, _ in our_runs]
        plain_rate, our_rate = statistics.median(plain_rates), statistics.median(our_rates)

        # The scaling table: 1x from the turns above, 2x and 4x once each.
        rates = {1: our_rate}
        timings = {1: statistics.median(wall for _, wall in our_runs)}
        for factor in (2, 4):
            rates[factor], timings[factor] = ours(
                corpus[: args.examples * factor], f"ours-{factor}x"
            )

    print(
        f"{args.examples} examples x {spec.epochs} epochs, batch {spec.batch_size}, "
        f"LoRA r={spec.lora_r} on {', '.join(spec.target_modules or ['PEFT defaults'])}"
    )
    print("| training loop | examples/s | ratio |\n|---|---|---|")
    print(f"| plain transformers Trainer | {plain_rate:,.0f} | 1.00x |")
    print(f"| retrainer SFT (eval, checkpoints) | {our_rate:,.0f} | {our_rate / plain_rate:.2f}x |")
    print(
        f"(medians of {args.turns} turns each: plain {_rates(plain_rates)}; "
        f"ours {_rates(our_rates)})"
    )
    print(
        "\n| examples | wall s (load, train, save) | examples/s | time vs 1x |\n|---|---|---|---|"
    )
    for factor, seconds in timings.items():
        print(
            f"| {args.examples * factor} ({factor}x) | {seconds:.1f} | {rates[factor]:,.0f} | "
            f"{seconds / timings[1]:.2f}x |"
        )
    record(
        "retrainer",
        [
            Figure(
                "retrainer SFT (validation, early stopping, checkpoints)",
                our_rate,
                "a plain transformers Trainer, same LoRA and data",
                plain_rate,
                "examples/s",
                ">= 0.9",
                note="what the retrainer adds (evaluations, checkpoints, the progress "
                "callback) may cost at most a tenth of a plain loop's speed; medians of "
                f"{args.turns} turns each, plain {_rates(plain_rates)}, ours {_rates(our_rates)}",
            )
        ],
        f"{args.examples} generated examples x {spec.epochs} epochs, batch {spec.batch_size}, "
        f"LoRA r={spec.lora_r}, on the demo's base architecture built fresh; the plain loop "
        f"taking {args.turns} turns with the retrainer's train_sft (order swapped each turn, "
        "medians compared); then train_sft once on 2x and 4x the data for the scaling table.",
    )


def _rates(values: list[float]) -> str:
    return ", ".join(f"{v:,.0f}" for v in values) + " examples/s"


if __name__ == "__main__":
    main()
