"""Synthetic prediction and feedback events, as the gateway would log them, for driving the
monitor without a model (its tests and ``bench/monitor.py``). ``refinery simulate`` is the
real thing: it calls the gateway.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator

from refinery.common.events import FeedbackEvent, PredictionEvent
from refinery.common.task import TaskObjective
from refinery.demo.corpus import generate


def synthetic_traffic(
    task: TaskObjective,
    version: str,
    n: int,
    *,
    domain: str = "retail",
    shifted_share: float = 0.0,
    down_rate: float = 0.1,
    rated_share: float = 0.8,
    seed: int = 0,
) -> Iterator[tuple[PredictionEvent, FeedbackEvent | None]]:
    """``n`` predictions of ``domain`` (a ``shifted_share`` of them from the other domain),
    each with a rating from a ``rated_share`` of users. The champion answers its own domain
    right and the other mostly wrong: as "technical" for a label, with a vague reply that
    answers no ticket for free text. A chat task's predictions carry their conversation."""
    rng = random.Random(f"{seed}-{version}")
    other = "smart_home" if domain == "retail" else "retail"
    shifted = round(n * shifted_share)
    tickets = generate(task, n - shifted, seed=seed, domain=domain)
    tickets += generate(task, shifted, seed=seed + 1, domain=other) if shifted else []
    rng.shuffle(tickets)
    wrong = (
        task.completion_for("technical")
        if task.kind == "classification"
        else task.correction_target("Thanks for reaching out, we will look into it.")
    )
    for ex in tickets:
        pid = str(uuid.UUID(int=rng.getrandbits(128)))
        right = ex.segment == "retail" or rng.random() < 0.3
        prediction = PredictionEvent(
            prediction_id=pid,
            endpoint="chat.completions" if ex.messages else "completions",
            prompt=ex.prompt,
            messages=list(ex.messages) if ex.messages else None,
            completion=ex.completion if right else wrong,
            model="refinery-model",
            model_version=version,
            served_name=f"refinery-model-v{version}",
            prompt_tokens=len(ex.prompt) // 4,
            completion_tokens=1,
            latency_ms=rng.gauss(15, 2),
            segment=ex.segment,
        )
        feedback = None
        if rng.random() < rated_share:
            down = rng.random() < down_rate
            feedback = FeedbackEvent(
                feedback_id=f"{pid}:u", prediction_id=pid, rating="down" if down else "up"
            )
        yield prediction, feedback
