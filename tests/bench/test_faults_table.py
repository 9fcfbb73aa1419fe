"""The fault bench's table says why completions failed, as it says why ratings were refused."""

from __future__ import annotations

import httpx
import openai

from bench.faults import Fault, table
from refinery.demo.simulate import failure_kind

REQUEST = httpx.Request("POST", "http://127.0.0.1:8000/v1/completions")


def test_a_failed_completion_is_known_by_its_status_or_its_error() -> None:
    limited = openai.RateLimitError(
        "slow down", response=httpx.Response(429, request=REQUEST), body=None
    )
    assert failure_kind(limited) == "429"
    assert failure_kind(openai.APIConnectionError(request=REQUEST)) == "APIConnectionError"
    assert failure_kind(openai.APITimeoutError(request=REQUEST)) == "APITimeoutError"


def test_the_table_gives_the_kinds_of_failed_completions_and_refused_ratings() -> None:
    fault = Fault("controller", "the KRaft controller SIGKILLed", at=10.0, recovered_s=27.0)
    fault.counts = {
        "requests": 961,
        "completion_errors": 17,
        "feedback_refused": 9,
        "predictions_acked": 944,
        "feedback_acked": 656,
        "predictions_missing": 0,
        "feedback_missing": 0,
        "examples_missing": 0,
        "prediction_duplicates": 0,
        "feedback_duplicates": 5,
    }
    fault.completion_failed_by = {"APIConnectionError": 1, "429": 16}
    fault.feedback_refused_by = {"503": 9}
    row = table([fault]).splitlines()[2]
    assert row.startswith(
        "| controller | 17 of 961 (429: 16, APIConnectionError: 1) / 9 (503: 9) | "
        "0 of 944 predictions + 656 ratings | 0 / 5 | 27 s |"
    ), row
