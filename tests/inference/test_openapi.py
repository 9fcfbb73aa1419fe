"""The gateway against its own OpenAPI: schemathesis generates requests for every operation
(schema examples, boundary values, random valid and invalid data) and runs every check on
the answers: status codes, content types, headers and bodies as documented, invalid data
refused, valid data accepted, no undocumented server error.

Admin operations run with a feedback-scoped key: every call is refused before it reaches the
registry or Kafka, so a generated promote, rollback or retrain can never move the session's
champion or start a retraining (tests/inference/test_admin.py runs them for real).
"""

from __future__ import annotations

import json

import pytest
import schemathesis
from hypothesis import HealthCheck, assume, settings
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig
from schemathesis.schemas import BaseSchema

from refinery.common.settings import Settings
from refinery.inference.app import create_app
from tests.conftest import API_KEYS

# Fixed, so a failure in CI reproduces; change it to explore other inputs.
SEED = 20261129


@pytest.fixture(scope="module")
def gateway_schema(full_stack: Settings) -> BaseSchema:
    # An explicit config: no schemathesis.toml found on the way up from the working directory.
    config = SchemathesisConfig(seed=SEED)
    return schemathesis.openapi.from_url(f"{full_stack.gateway_url}/openapi.json", config=config)


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    # schemathesis 4.32's from_fixture reads `node._nodeid`, which pytest 9.2 renamed;
    # it only labels each operation's report with it.
    request.node._nodeid = request.node.nodeid


schema = schemathesis.pytest.from_fixture("gateway_schema")


def _fits_the_context(case: schemathesis.Case, context_tokens: int) -> bool:
    """Is a valid completion request small enough for the served model's context?

    vLLM refuses more with the documented 400 that names the limit, a limit counted in
    tokens, which no JSON schema can state. The offline model's tokenizer is byte-level BPE
    (at most one token per byte); half the context leaves room for the chat template."""
    meta = case.meta
    if meta is None or meta.generation.mode is not GenerationMode.POSITIVE:
        return True
    if "completions" not in case.path or not isinstance(case.body, dict):
        return True
    text = json.dumps([case.body.get("prompt"), case.body.get("messages")]).encode()
    max_tokens = case.body.get("max_tokens") or 0
    return len(text) <= context_tokens // 2 and max_tokens <= context_tokens


@schema.parametrize()
@settings(
    max_examples=10,  # per operation and mode; completions generate tokens on 2 CPU cores
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@pytest.mark.timeout(180, func_only=True)  # not counting the stack start-up in fixtures
def test_the_gateway_answers_as_its_openapi_says(
    case: schemathesis.Case, full_stack: Settings
) -> None:
    assume(_fits_the_context(case, full_stack.vllm_max_model_len))
    scope = "feedback" if case.path.startswith("/v1/admin/") else "admin"
    case.call_and_validate(headers={"Authorization": f"Bearer {API_KEYS[scope]}"}, timeout=60)


def test_every_error_a_route_can_answer_is_documented_with_the_error_body() -> None:
    spec = create_app(Settings()).openapi()
    error = {"$ref": "#/components/schemas/ErrorResponse"}
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            where = f"{method.upper()} {path}"
            responses = operation["responses"]
            needs = set()
            if any(p["name"] == "authorization" for p in operation.get("parameters", ())):
                needs |= {"401", "403"}
            if "requestBody" in operation:
                needs |= {"400", "413", "422"}
            assert needs <= responses.keys(), f"{where} lacks {needs - responses.keys()}"
            for status, response in responses.items():
                if status.startswith(("4", "5")) and path != "/readyz":
                    assert response["content"]["application/json"]["schema"] == error, where
                if status == "503" and path != "/readyz":
                    assert response["headers"]["Retry-After"]["required"], where
    metrics = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]
