"""For the serving tests: clients under load, adapters to serve, champions to make, and
what the gateway wrote to Kafka."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import httpx
import mlflow
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from refinery.common.events import Event
from refinery.common.kafka import EventConsumer, EventProducer
from refinery.common.promotion import model_event, promote
from refinery.common.registry import CHAMPION, ModelRegistry, VersionInfo
from refinery.common.settings import Settings
from refinery.common.topics import Stream
from tests.conftest import API_KEYS


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


PROMPT = "Ticket: where is my parcel, it is late\nTeam:"
ADMIN = {"Authorization": f"Bearer {API_KEYS['admin']}"}


def complete(http: httpx.Client, settings: Settings) -> httpx.Response:
    return http.post(
        f"{settings.gateway_url}/v1/completions",
        headers=ADMIN,
        json={
            "model": settings.registered_model,
            "prompt": PROMPT,
            "max_tokens": 3,
            "temperature": 0,
        },
    )


def serve_the_base_again(settings: Settings, why: str) -> None:
    """Champion v1 again, promoted as ops would, and the session's gateway answering with
    it: what every test on the session's stack starts from, whichever ran before it (under
    pytest-xdist a worker's files come in no fixed order)."""
    registry = ModelRegistry(settings)
    if registry.champion() != registry.get("1"):
        promote(settings, "1", reasons=[why])
    wait_served(settings, settings.served_model_name)


def wait_served(settings: Settings, served_name: str, timeout_s: float = 120) -> None:
    """Until the gateway answers with ``served_name``."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=60) as http:
        while (served := complete(http, settings).json()["model"]) != served_name:
            assert time.monotonic() < deadline, f"{served_name} never served (still {served})"
            time.sleep(0.5)


def announce(settings: Settings, info: VersionInfo, action: str, previous: str) -> None:
    """The model event alone (no alias moved, no decision told)."""
    event = model_event(info, action, previous)
    with EventProducer(settings) as producer:
        producer.send_and_wait(Stream.MODELS, event, key=info.name)


def make_champion(settings: Settings, info: VersionInfo, action: str, previous: str) -> None:
    """What promotion and rollback do: move the alias, then announce it."""
    ModelRegistry(settings).set_alias(CHAMPION, info.version)
    announce(settings, info, action, previous)


class Load:
    """Clients calling the gateway in threads; records which model answered and failures.

    ``retries``: how many times a client sends a request again when the connection broke
    before the whole answer came (what the official ``openai`` client does by default, up to
    2 times); such requests are listed in ``retried``. An HTTP error status is never retried.
    """

    def __init__(
        self, settings: Settings, threads: int, retries: int = 0, pause_s: float = 0.0
    ) -> None:
        self.settings = settings
        self.retries = retries
        self.pause_s = pause_s  # between one client's requests: leaves the cores some room
        self.served: list[str] = []
        self.failures: list[str] = []
        self.retried: list[str] = []
        self._stop = threading.Event()
        self._workers = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        with httpx.Client(timeout=60) as http:
            while not self._stop.is_set():
                self._one(http)
                self._stop.wait(self.pause_s)

    def _one(self, http: httpx.Client) -> None:
        for attempt in range(self.retries + 1):
            try:
                r = complete(http, self.settings)
            except httpx.TransportError as exc:
                if attempt == self.retries:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                    return
                self.retried.append(f"{type(exc).__name__}: {exc}")
                continue
            if r.status_code == 200:
                self.served.append(r.json()["model"])
            else:
                self.failures.append(f"{r.status_code} {r.text[:200]}")
            return

    def wait_for(self, served_name: str, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while served_name not in self.served[-6:] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert served_name in self.served[-6:], f"{served_name} never served"

    def __enter__(self) -> Load:
        for w in self._workers:
            w.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for w in self._workers:
            w.join()
