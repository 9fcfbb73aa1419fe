"""The gateway with the official openai client, against real vLLM, Kafka and MLflow."""

from __future__ import annotations

import http.client
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from refinery.common.events import ChatTurn, FeedbackEvent, PredictionEvent
from refinery.common.registry import ModelRegistry
from refinery.common.settings import Settings
from refinery.common.topics import Stream
from refinery.inference.protocol import MAX_CHOICES
from refinery.retrainer.sequence import prompt_ids
from tests.conftest import API_KEYS, OTHER_TENANT_KEY
from tests.inference.helpers import read_events

PROMPT = "Ticket: I was charged twice for my order\nTeam:"


@pytest.fixture(scope="module")
def client(full_stack: Settings) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{full_stack.gateway_url}/v1", api_key=API_KEYS["inference"], max_retries=0
    )


def _prediction(settings: Settings, prediction_id: str) -> PredictionEvent:
    [event] = read_events(settings, Stream.PREDICTIONS, {prediction_id}, "prediction_id")
    assert isinstance(event, PredictionEvent)
    return event


def test_completion_is_served_and_logged(full_stack: Settings, client: openai.OpenAI) -> None:
    resp = client.completions.create(
        model=full_stack.registered_model,
        prompt=PROMPT,
        max_tokens=4,
        temperature=0,
        extra_body={"segment": "retail"},
        user="alice",
    )
    assert resp.id.startswith("cmpl-")
    assert resp.model == f"{full_stack.served_model_name}"  # v1 is the base model itself
    text = resp.choices[0].text
    logged = _prediction(full_stack, resp.id)
    assert logged.completion == text
    assert logged.prompt == PROMPT
    assert logged.model_version == "1"
    assert logged.segment == "retail" and logged.user == "alice"
    assert logged.params.max_tokens == 4 and logged.params.temperature == 0
    assert resp.usage is not None
    assert logged.prompt_tokens == resp.usage.prompt_tokens
    assert logged.completion_tokens == resp.usage.completion_tokens > 0
    assert logged.latency_ms > 0


def test_chat_completion_is_served_and_logged(full_stack: Settings, client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model=full_stack.registered_model,
        max_tokens=4,
        temperature=0,
        messages=[{"role": "user", "content": PROMPT}],
    )
    assert resp.id.startswith("chatcmpl-")
    logged = _prediction(full_stack, resp.id)
    assert logged.endpoint == "chat.completions"
    assert logged.completion == resp.choices[0].message.content
    assert logged.messages == [ChatTurn(role="user", content=PROMPT)]
    assert logged.prompt == PROMPT  # the last user turn: what drift features read


def test_the_retrainer_builds_the_prompt_ids_vllm_served_for_a_logged_chat(
    full_stack: Settings, client: openai.OpenAI, tmp_path: Path
) -> None:
    """One rendering of a conversation: the ids vLLM's chat endpoint fed the model equal
    the ids the retrainer builds from the logged event (system prompt, turns, text parts)."""
    messages = [
        {"role": "system", "content": "You route support tickets to a team."},
        {"role": "user", "content": "I was charged twice"},
        {"role": "assistant", "content": "billing"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "and my parcel is late"},
                {"type": "text", "text": "since Monday"},
            ],
        },
    ]
    resp = client.chat.completions.create(
        model=full_stack.registered_model,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=4,
        temperature=0,
        extra_body={"return_token_ids": True},
    )
    served = (resp.model_extra or {})["prompt_token_ids"]
    logged = _prediction(full_stack, resp.id)
    assert logged.messages is not None
    assert logged.messages[-1] == ChatTurn(
        role="user", content="and my parcel is late\nsince Monday"
    )
    registry = ModelRegistry(full_stack)
    champion = registry.champion()
    assert champion is not None
    base_dir = registry.local_copy(registry.serving_base(champion), tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    assert prompt_ids(tokenizer, logged.prompt, logged.messages) == served


def test_chat_content_of_other_kinds_than_text_is_refused_by_name(full_stack: Settings) -> None:
    body = {
        "model": full_stack.registered_model,
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
    }
    resp = httpx.post(
        f"{full_stack.gateway_url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {API_KEYS['inference']}"},
    )
    assert resp.status_code == 422 and "messages.0.content" in resp.text


def test_streaming_completion_relays_chunks_and_logs_the_whole_text(
    full_stack: Settings, client: openai.OpenAI
) -> None:
    stream = client.completions.create(
        model=full_stack.registered_model, prompt=PROMPT, max_tokens=6, temperature=0, stream=True
    )
    chunks = list(stream)
    ids = {c.id for c in chunks}
    assert len(ids) == 1
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert all(c.usage is None for c in chunks)  # not asked for: not sent
    logged = _prediction(full_stack, ids.pop())
    assert logged.completion == text
    assert logged.completion_tokens > 0  # counted even though the client did not ask


def test_streaming_chat_with_usage(full_stack: Settings, client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=full_stack.registered_model,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=4,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    usage = [c.usage for c in chunks if c.usage]
    assert usage and usage[-1].completion_tokens > 0
    text = "".join((c.choices[0].delta.content or "") for c in chunks if c.choices)
    assert _prediction(full_stack, chunks[0].id).completion == text


def _prediction_ids(choices: list[Any]) -> list[str]:
    """Each choice's own id to rate it (a field of Refinery's in OpenAI's choice object)."""
    extras = [choice.model_extra or {} for choice in choices]
    assert all("token_ids" not in extra for extra in extras)  # asked for by the gateway only
    return [extra["prediction_id"] for extra in extras]


def test_each_of_n_choices_is_a_prediction_of_its_own_to_rate(
    full_stack: Settings, client: openai.OpenAI
) -> None:
    resp = client.completions.create(
        model=full_stack.registered_model,
        prompt=PROMPT,
        max_tokens=5,
        temperature=1.5,
        seed=11,
        n=3,
        extra_body={"segment": "retail"},
    )
    ids = _prediction_ids(resp.choices)
    assert [c.index for c in resp.choices] == [0, 1, 2]
    assert len(set(ids)) == 3 and resp.id == ids[0]
    assert "prompt_token_ids" not in (resp.model_extra or {})
    logged = {i: _prediction(full_stack, i) for i in ids}
    assert [logged[i].completion for i in ids] == [c.text for c in resp.choices]
    assert resp.usage is not None
    # Each choice's own tokens (vLLM's usage counts them all together); one prompt.
    assert sum(logged[i].completion_tokens for i in ids) == resp.usage.completion_tokens
    assert all(logged[i].completion_tokens > 0 for i in ids)
    assert {logged[i].prompt_tokens for i in ids} == {resp.usage.prompt_tokens}
    assert {logged[i].segment for i in ids} == {"retail"}
    rated = _post_feedback(full_stack, {"prediction_id": ids[2], "rating": "up", "user": "bob"})
    assert rated.status_code == 202, rated.text
    [event] = read_events(full_stack, Stream.FEEDBACK, {ids[2]}, "prediction_id")
    assert isinstance(event, FeedbackEvent) and event.rating == "up"


def test_streamed_choices_carry_their_own_ids_and_are_logged_each(
    full_stack: Settings, client: openai.OpenAI
) -> None:
    stream = client.chat.completions.create(
        model=full_stack.registered_model,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=5,
        temperature=1.5,
        seed=3,
        n=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert {c.id for c in chunks} == {chunks[0].id}
    texts: dict[int, str] = {0: "", 1: ""}
    ids: dict[int, set[str]] = {0: set(), 1: set()}
    for chunk in chunks:
        choice_ids = _prediction_ids(chunk.choices)
        for choice, prediction_id in zip(chunk.choices, choice_ids, strict=True):
            texts[choice.index] += choice.delta.content or ""
            ids[choice.index].add(prediction_id)
    assert all(len(one) == 1 for one in ids.values())
    first, second = ids[0].pop(), ids[1].pop()
    assert chunks[0].id == first != second
    usage = [c.usage for c in chunks if c.usage]
    assert usage
    logged = [_prediction(full_stack, first), _prediction(full_stack, second)]
    assert [event.completion for event in logged] == [texts[0], texts[1]]
    assert sum(event.completion_tokens for event in logged) == usage[-1].completion_tokens


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"n": MAX_CHOICES + 1}, "n: Input should be less than or equal to 16"),
        ({"n": 2, "temperature": 0}, "n: Value error, more than one choice needs a temperature"),
    ],
)
def test_choices_the_gateway_cannot_give_are_refused_by_name(
    full_stack: Settings, extra: dict[str, Any], reason: str
) -> None:
    body = {"model": full_stack.registered_model, "prompt": PROMPT, **extra}
    resp = httpx.post(
        f"{full_stack.gateway_url}/v1/completions",
        json=body,
        headers={"Authorization": f"Bearer {API_KEYS['inference']}"},
    )
    assert resp.status_code == 422 and reason in resp.json()["error"]["message"], resp.text


def test_models_lists_the_champion_with_its_version(full_stack: Settings) -> None:
    resp = httpx.get(
        f"{full_stack.gateway_url}/v1/models",
        headers={"Authorization": f"Bearer {API_KEYS['inference']}"},
    )
    [card] = resp.json()["data"]
    assert card["id"] == full_stack.registered_model
    assert card["version"] == "1"


def test_unknown_model_is_a_404_that_names_the_right_one(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="refinery-model"):
        client.completions.create(model="gpt-4", prompt=PROMPT, max_tokens=2)


def _post_feedback(settings: Settings, body: object, key: str = "feedback") -> httpx.Response:
    return httpx.post(
        f"{settings.gateway_url}/v1/feedback",
        json=body,
        timeout=30,
        headers={"Authorization": f"Bearer {API_KEYS[key]}"},
    )


def test_feedback_is_accepted_once_on_kafka(full_stack: Settings, client: openai.OpenAI) -> None:
    resp = client.completions.create(
        model=full_stack.registered_model, prompt=PROMPT, max_tokens=4, temperature=0
    )
    first = _post_feedback(
        full_stack,
        {"prediction_id": resp.id, "rating": "down", "correction": "Billing ", "user": "bob"},
    )
    assert first.status_code == 202, first.text
    # Normalised as the CLI does it (TaskObjective.correction_target); a non-label is refused.
    refused = _post_feedback(
        full_stack,
        {"prediction_id": resp.id, "rating": "down", "correction": "plumbing", "user": "bob"},
    )
    assert refused.status_code == 400 and "not a label" in refused.json()["error"]["message"]
    again = _post_feedback(full_stack, {"prediction_id": resp.id, "rating": "up", "user": "bob"})
    assert again.status_code == 202
    other = _post_feedback(full_stack, {"prediction_id": resp.id, "rating": "up", "user": "eve"})
    events = read_events(full_stack, Stream.FEEDBACK, {resp.id}, "prediction_id")
    assert all(isinstance(e, FeedbackEvent) for e in events)
    by_user = {e.user: e for e in events if isinstance(e, FeedbackEvent)}
    assert len(events) == 3
    # bob's second rating carries the id of his first: downstream it replaces, not adds.
    assert first.json()["feedback_id"] == again.json()["feedback_id"] == by_user["bob"].feedback_id
    assert other.json()["feedback_id"] != first.json()["feedback_id"]
    assert by_user["bob"].rating == "up"
    corrected = [e for e in events if isinstance(e, FeedbackEvent) and e.correction]
    assert [e.correction for e in corrected] == [" billing"]


def test_only_the_tenant_that_got_an_answer_can_rate_it(full_stack: Settings) -> None:
    shop_2 = OTHER_TENANT_KEY.split(":")[0]
    other = openai.OpenAI(base_url=f"{full_stack.gateway_url}/v1", api_key=shop_2)
    resp = other.completions.create(model=full_stack.registered_model, prompt=PROMPT, max_tokens=2)
    body = {"prediction_id": resp.id, "rating": "down", "user": "mallory"}
    refused = _post_feedback(full_stack, body)  # the default tenant's feedback key
    assert refused.status_code == 404 and "this key's tenant" in refused.json()["error"]["message"]
    own = httpx.post(
        f"{full_stack.gateway_url}/v1/feedback",
        json={**body, "user": "carol"},
        timeout=30,
        headers={"Authorization": f"Bearer {shop_2}"},
    )
    assert own.status_code == 202, own.text
    assert _post_feedback(full_stack, {**body, "user": "ops"}, key="admin").status_code == 202
    events = read_events(full_stack, Stream.FEEDBACK, {resp.id}, "prediction_id")
    by_user = {e.user: e for e in events if isinstance(e, FeedbackEvent)}
    assert set(by_user) == {"carol", "ops"}
    assert {e.tenant for e in by_user.values()} == {"shop-2"}
    # The key is named by its fingerprint, never by its value.
    assert by_user["carol"].key_id != by_user["ops"].key_id
    assert all(e.key_id and e.key_id not in shop_2 for e in by_user.values())


def test_feedback_rejections_say_why(full_stack: Settings, client: openai.OpenAI) -> None:
    resp = client.completions.create(model=full_stack.registered_model, prompt=PROMPT, max_tokens=2)
    forged = resp.id[:-4] + ("0000" if not resp.id.endswith("0000") else "1111")
    r = _post_feedback(full_stack, {"prediction_id": forged, "rating": "up"})
    assert r.status_code == 404 and "was not issued by this service" in r.json()["error"]["message"]
    r = _post_feedback(full_stack, {"prediction_id": "cmpl-made-up", "rating": "up"})
    assert r.status_code == 404
    r = _post_feedback(full_stack, {"prediction_id": resp.id, "rating": "sideways"})
    assert r.status_code == 422
    message = r.json()["error"]["message"]
    assert "rating" in message and "sideways" in message
    r = _post_feedback(
        full_stack,
        {
            "prediction_id": resp.id,
            "rating": "up",
            "comment": "x" * (full_stack.max_body_bytes + 10),
        },
    )
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]


def test_api_keys_and_scopes(full_stack: Settings) -> None:
    url = full_stack.gateway_url
    body = {"model": full_stack.registered_model, "prompt": PROMPT, "max_tokens": 2}
    assert httpx.post(f"{url}/v1/completions", json=body).status_code == 401
    wrong = httpx.post(f"{url}/v1/completions", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "unknown API key" in wrong.text
    accented = httpx.post(
        f"{url}/v1/completions", json=body, headers={"Authorization": "Bearer clé".encode()}
    )
    assert accented.status_code == 401 and "unknown API key" in accented.text
    scoped = httpx.post(
        f"{url}/v1/completions",
        json=body,
        headers={"Authorization": f"Bearer {API_KEYS['feedback']}"},
    )
    assert scoped.status_code == 403 and "inference" in scoped.text
    admin = httpx.post(
        f"{url}/v1/completions",
        json=body,
        timeout=30,
        headers={"Authorization": f"Bearer {API_KEYS['admin']}"},
    )
    assert admin.status_code == 200


def test_health_readiness_and_metrics(full_stack: Settings, client: openai.OpenAI) -> None:
    url = full_stack.gateway_url
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{url}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["ready"] is True
    client.completions.create(model=full_stack.registered_model, prompt=PROMPT, max_tokens=2)
    text = httpx.get(f"{url}/metrics").text
    assert 'refinery_requests_total{route="/v1/completions",status="200"}' in text
    assert "refinery_request_latency_seconds_bucket" in text
    assert "refinery_prediction_log_backlog" in text
    assert 'refinery_tokens_total{kind="completion"}' in text


def test_a_connection_idle_as_long_as_clients_keep_one_still_answers(full_stack: Settings) -> None:
    """Clients pool idle connections for ~5 s; the gateway must not close them first, or a
    request sent on one as it closes fails (seen as one "Connection error." in the demo)."""
    conn = http.client.HTTPConnection(full_stack.gateway_host, full_stack.gateway_port, timeout=10)
    try:
        for pause in (0.0, 6.0):
            time.sleep(pause)
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            response.read()
            assert response.status == 200
            assert response.getheader("connection", "keep-alive").lower() != "close"
    finally:
        conn.close()
