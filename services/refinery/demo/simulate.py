"""``refinery simulate``: apps and users, played against the real gateway.

Apps call the gateway with the official openai client at a set rate (``/v1/completions``;
``/v1/chat/completions`` for a chat task); at a set time the traffic turns to the new
product line (a share of it). Users know the right answer (the generator's hidden label or
reference reply) and rate what they got: thumbs-up when right, thumbs-down when wrong, with
a correction on a share of thumbs-down; some never rate, some rate late. A free-text answer
is right when its chrF to the reference reaches a threshold, and a correction is one of the
reference's phrasings. Every request is recorded (time, domain, truth, answer, served
version, chrF for free text), so quality is measured from ground truth, not claimed.
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
from typing import cast

import httpx
import openai
import sacrebleu
from openai.types.chat import ChatCompletionMessageParam

from refinery.common.datasets import LabeledText
from refinery.common.task import TaskKind, TaskObjective
from refinery.demo.corpus import generate, reply_completion
from refinery.demo.replies import phrasings

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
    thumbs_up_chrf: float = 60.0  # free text: a user is content at this chrF (0-100) or more
    concurrency: int = 32
    seed: int = 0


@dataclass
class Request:
    """One simulated request and what came of it."""

    t: float  # seconds since the simulation started
    domain: str
    truth: str
    answer: str = ""
    correct: bool = False  # free text: what the user judged (chrF at the threshold or above)
    score: float | None = None  # free text: chrF (0-100) to the reference; None for labels
    version: str = ""  # the served name that answered (<model>-v<N>)
    prediction_id: str = ""
    status: str = "pending"  # ok | error
    rating: str | None = None
    error: str = ""
    error_kind: str = ""  # why the completion failed: a status code or an error's name
    feedback_id: str = ""  # what the gateway acknowledged (202) for the rating
    feedback_t: float | None = None  # when it was acknowledged, seconds since the start
    # why each try before the 202 (or the last) was refused: a status code or an error's name
    feedback_refusals: list[str] = field(default_factory=list)
    latency: float | None = None  # seconds the completion took (answered or not)


@dataclass(frozen=True)
class TaskMetric:
    """What the demo measures per request and reports: accuracy of a label, chrF of free text."""

    name: str  # as reports, summaries and plots name it
    graded: bool  # a score per request (free text), or right/wrong (labels)
    top: float  # its best value: the plot's scale
    digits: int  # decimals shown

    def of(self, requests: Sequence[Request]) -> float | None:
        """Over the answered requests (None when none was answered)."""
        answered = [r for r in requests if r.status == "ok"]
        if not answered:
            return None
        if not self.graded:
            return accuracy(answered)
        return sum(r.score or 0.0 for r in answered) / len(answered)


ACCURACY = TaskMetric("accuracy", graded=False, top=1.0, digits=3)
# The run's mean sentence chrF (0-1, logged when gate.metric is chrf) is the same measure.
CHRF = TaskMetric("chrF", graded=True, top=100.0, digits=1)


def task_metric(kind: TaskKind) -> TaskMetric:
    """The demo's metric for a task kind: labels are right or wrong, free text is graded."""
    return ACCURACY if kind == "classification" else CHRF


@dataclass(frozen=True)
class Verdict:
    """A user's judgement of one answer."""

    up: bool  # thumbs-up
    score: float | None  # free text: chrF (0-100) to the closest phrasing of the reference


def judge(task: TaskObjective, truth: str, answer: str, thumbs_up_chrf: float) -> Verdict:
    """How a user who knows the right answer rates ``answer``: the one "is this right".

    A label is right when it names the true label. Free text is right when its chrF to the
    reference reaches ``thumbs_up_chrf``: the user knows what the reply must say, not one
    exact wording, so every phrasing of the reference counts (the closest one is taken).
    """
    if task.kind == "classification":
        return Verdict(up=task.parse_label(answer) == task.parse_label(truth), score=None)
    score = sacrebleu.sentence_chrf(answer.strip(), list(phrasings(truth))).score
    return Verdict(up=score >= thumbs_up_chrf, score=score)


def correction(task: TaskObjective, truth: str, rng: random.Random) -> str:
    """What a user writes as the right answer: the label, or one phrasing of the reference
    reply in the task's completion format (people word the same reply a little differently)."""
    if task.kind == "classification":
        return truth
    return reply_completion(task, rng.choice(phrasings(truth)))


@dataclass
class Simulation:
    started_at: float  # epoch seconds
    config: SimulationConfig
    requests: list[Request] = field(default_factory=list)
    feedback_sent: int = 0
    feedback_failed: int = 0
    kind: TaskKind = "classification"

    @property
    def onset_at(self) -> float:
        return self.started_at + self.config.shift_at_s

    @property
    def metric(self) -> TaskMetric:
        return task_metric(self.kind)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as out:
            meta = {"started_at": self.started_at, "config": asdict(self.config)}
            if self.kind != "classification":
                meta["kind"] = self.kind
            out.write(json.dumps(meta) + "\n")
            for r in self.requests:
                row = asdict(r)
                if r.score is None:  # labels: the record stays as it always was
                    del row["score"]
                out.write(json.dumps(row) + "\n")


class _Pools:
    """Tickets per domain, generated once, drawn at random."""

    def __init__(self, task: TaskObjective, seed: int) -> None:
        self.tickets = {
            domain: generate(task, 3000, seed=1000 + seed + i, domain=domain)
            for i, domain in enumerate(("retail", "smart_home"))
        }

    def draw(self, domain: str, rng: random.Random) -> LabeledText:
        return rng.choice(self.tickets[domain])


async def _ask(
    client: openai.AsyncOpenAI, model: str, task: TaskObjective, ex: LabeledText, user: str
) -> tuple[str, str, str]:
    """One request as an app makes it: the prediction id, the served name and the answer."""
    if task.kind == "chat":
        # The turns as the openai client types them (ChatTurn has the same two fields).
        messages = [cast(ChatCompletionMessageParam, t.model_dump()) for t in ex.messages or ()]
        chat = await client.chat.completions.create(
            model=model,
            messages=messages,
            max_tokens=task.max_new_tokens,
            temperature=0,
            user=user,
            extra_body={"segment": ex.segment},
        )
        return chat.id, chat.model, chat.choices[0].message.content or ""
    r = await client.completions.create(
        model=model,
        prompt=ex.prompt,
        max_tokens=task.max_new_tokens,
        temperature=0,
        user=user,
        extra_body={"segment": ex.segment},
    )
    return r.id, r.model, r.choices[0].text


def failure_kind(exc: openai.OpenAIError) -> str:
    """Why a completion failed, for counting: the status code of a refusal (429, 503), else
    the client's error (APIConnectionError: nothing listened; APITimeoutError)."""
    if isinstance(exc, openai.APIStatusError):
        return str(exc.status_code)
    return type(exc).__name__


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
    sim = Simulation(started_at=time.time(), config=config, kind=task.kind)
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
            body["correction"] = correction(task, request.truth, rng)
        for attempt in range(5):  # 503 + Retry-After while Kafka is busy: wait and retry
            try:
                r = await http.post("/v1/feedback", json=body)
            except httpx.HTTPError as exc:
                request.feedback_refusals.append(type(exc).__name__)
                await asyncio.sleep(1 + attempt)
                continue
            if r.status_code == 202:
                request.rating = body["rating"]
                request.feedback_id = r.json()["feedback_id"]
                request.feedback_t = time.time() - sim.started_at
                sim.feedback_sent += 1
                return
            request.feedback_refusals.append(str(r.status_code))
            if r.status_code != 503:
                break
            await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
        sim.feedback_failed += 1

    async def one(request: Request, ex: LabeledText, user: str) -> None:
        asked = time.perf_counter()  # from when it was due: waiting for a slot counts too
        async with limit:
            try:
                request.prediction_id, request.version, request.answer = await _ask(
                    client, model, task, ex, user
                )
            except openai.OpenAIError as exc:
                request.status, request.error = "error", str(exc)[:200]
                request.error_kind = failure_kind(exc)
                return
            finally:
                request.latency = time.perf_counter() - asked
        request.status = "ok"
        verdict = judge(task, request.truth, request.answer, config.thumbs_up_chrf)
        request.correct, request.score = verdict.up, verdict.score
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
            ex = pools.draw(domain, rng)
            request = Request(t=now, domain=domain, truth=ex.completion)
            sim.requests.append(request)
            task_ = asyncio.create_task(one(request, ex, f"user-{rng.randrange(500)}"))
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


def until_promoted_then(
    seconds: float, busy: Callable[[set[str]], bool] = lambda answered: False
) -> Callable[[Simulation], bool]:
    """Stop ``seconds`` after the newest version's first answer, once a version other than
    the first one has answered and ``busy(versions that answered)`` is false (a retraining
    under way, or a promoted version that has not answered yet)."""
    first_answer: dict[str, float] = {}
    settled = [0]  # requests before this index are answered or failed: read once

    def done(sim: Simulation) -> bool:
        requests = sim.requests
        while settled[0] < len(requests) and requests[settled[0]].status != "pending":
            r = requests[settled[0]]
            if r.status == "ok":
                first_answer.setdefault(r.version, r.t)
            settled[0] += 1
        if len(first_answer) < 2:
            return False
        newest = max(first_answer.values())
        return time.time() - sim.started_at >= newest + seconds and not busy(set(first_answer))

    return done


def accuracy(requests: Sequence[Request]) -> float | None:
    answered = [r for r in requests if r.status == "ok"]
    return sum(r.correct for r in answered) / len(answered) if answered else None
