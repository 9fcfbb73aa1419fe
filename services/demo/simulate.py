"""``refinery simulate``: apps and users, played against the real gateway.

Apps call ``/v1/completions`` with the official openai client at a set rate; at a set time
the traffic turns to the new product line (a share of it). Users know the right team (the
generator's hidden label) and rate what they got: thumbs-up when right, thumbs-down when
wrong, with a correction on a share of thumbs-down; some never rate, some rate late.
Every request is recorded (time, domain, truth, answer, served version), so accuracy is
measured from ground truth, not claimed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import openai

from services.common.task import TaskObjective
from services.demo.corpus import generate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimulationConfig:
    rate: float = 20.0  # requests per second
    shift_at_s: float = 60.0  # the new product line starts here
    shift_share: float = 0.8  # share of traffic from the new domain after the shift
    max_duration_s: float = 600.0
    after_promotion_s: float = 60.0  # keep going this long once a new version answers
    rated_share: float = 0.7  # the rest of the users never rate
    late_share: float = 0.2  # of the ratings: sent 5-30 s later
    correction_share: float = 0.5  # of the thumbs-down: with the right answer
    concurrency: int = 32
    seed: int = 0


@dataclass
class Request:
    """One simulated request and what came of it."""

    t: float  # seconds since the simulation started
    domain: str
    truth: str
    answer: str = ""
    correct: bool = False
    version: str = ""  # the served name that answered (<model>-v<N>)
    prediction_id: str = ""
    status: str = "pending"  # ok | error
    rating: str | None = None
    error: str = ""


@dataclass
class Simulation:
    started_at: float  # epoch seconds
    config: SimulationConfig
    requests: list[Request] = field(default_factory=list)
    feedback_sent: int = 0
    feedback_failed: int = 0

    @property
    def onset_at(self) -> float:
        return self.started_at + self.config.shift_at_s

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as out:
            meta = {"started_at": self.started_at, "config": asdict(self.config)}
            out.write(json.dumps(meta) + "\n")
            for r in self.requests:
                out.write(json.dumps(asdict(r)) + "\n")


class _Pools:
    """Tickets per domain, generated once, drawn at random."""

    def __init__(self, task: TaskObjective, seed: int) -> None:
        self.tickets = {
            domain: generate(task, 3000, seed=1000 + seed + i, domain=domain)
            for i, domain in enumerate(("retail", "smart_home"))
        }

    def draw(self, domain: str, rng: random.Random) -> tuple[str, str]:
        ex = rng.choice(self.tickets[domain])
        return ex.prompt, ex.completion


async def simulate(
    gateway_url: str,
    api_key: str,
    model: str,
    task: TaskObjective,
    config: SimulationConfig,
    done: Callable[[Simulation], bool] = lambda _: False,
) -> Simulation:
    """Run until ``config.max_duration_s`` or until ``done(sim)`` says so."""
    rng = random.Random(config.seed)
    pools = _Pools(task, config.seed)
    sim = Simulation(started_at=time.time(), config=config)
    limit = asyncio.Semaphore(config.concurrency)
    client = openai.AsyncOpenAI(base_url=f"{gateway_url}/v1", api_key=api_key, max_retries=0)
    http = httpx.AsyncClient(
        base_url=gateway_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30
    )
    pending: set[asyncio.Task[None]] = set()

    async def rate(request: Request, user: str, delay: float) -> None:
        await asyncio.sleep(delay)
        body: dict[str, str] = {
            "prediction_id": request.prediction_id,
            "rating": "up" if request.correct else "down",
            "user": user,
        }
        if not request.correct and rng.random() < config.correction_share:
            body["correction"] = request.truth
        for attempt in range(5):  # 503 + Retry-After while Kafka is busy: wait and retry
            try:
                r = await http.post("/v1/feedback", json=body)
            except httpx.HTTPError:
                await asyncio.sleep(1 + attempt)
                continue
            if r.status_code == 202:
                request.rating = body["rating"]
                sim.feedback_sent += 1
                return
            if r.status_code != 503:
                break
            await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
        sim.feedback_failed += 1

    async def one(request: Request, prompt: str, user: str) -> None:
        async with limit:
            try:
                r = await client.completions.create(
                    model=model,
                    prompt=prompt,
                    max_tokens=task.max_new_tokens,
                    temperature=0,
                    user=user,
                    extra_body={"segment": request.domain},
                )
            except openai.OpenAIError as exc:
                request.status, request.error = "error", str(exc)[:200]
                return
        request.status = "ok"
        request.prediction_id, request.version = r.id, r.model
        request.answer = r.choices[0].text
        request.correct = task.parse_label(request.answer) == task.parse_label(request.truth)
        if rng.random() < config.rated_share:
            delay = rng.uniform(5, 30) if rng.random() < config.late_share else 0.0
            await rate(request, user, delay)

    try:
        tick = 1.0 / config.rate
        n = 0
        while True:
            now = time.time() - sim.started_at
            if now > config.max_duration_s or done(sim):
                break
            shifted = now >= config.shift_at_s and rng.random() < config.shift_share
            domain = "smart_home" if shifted else "retail"
            prompt, truth = pools.draw(domain, rng)
            request = Request(t=now, domain=domain, truth=truth)
            sim.requests.append(request)
            task_ = asyncio.create_task(one(request, prompt, f"user-{rng.randrange(500)}"))
            pending.add(task_)
            task_.add_done_callback(pending.discard)
            n += 1
            await asyncio.sleep(max(0.0, sim.started_at + n * tick - time.time()))
        if pending:
            await asyncio.wait(pending, timeout=60)
    finally:
        await client.close()
        await http.aclose()
    return sim


def until_promoted_then(seconds: float) -> Callable[[Simulation], bool]:
    """Stop ``seconds`` after the first answer from a version other than the first one."""
    first: dict[str, float] = {}

    def done(sim: Simulation) -> bool:
        answered = [r for r in sim.requests if r.status == "ok"]
        if not answered:
            return False
        initial = answered[0].version
        if "at" not in first:
            switched = next((r for r in answered if r.version != initial), None)
            if switched is None:
                return False
            first["at"] = switched.t
        return time.time() - sim.started_at >= first["at"] + seconds

    return done


def accuracy(requests: Sequence[Request]) -> float | None:
    answered = [r for r in requests if r.status == "ok"]
    return sum(r.correct for r in answered) / len(answered) if answered else None
