"""Cleaning of training examples: PII scrubbing, drops per step, and which duplicate wins."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from refinery.common.task import CleaningSpec, TaskObjective
from refinery.retrainer.clean import PII_KINDS, STEPS, CleanReport, clean, normalize, scrub_pii
from refinery.retrainer.examples import Source, TrainingExample

TASK = TaskObjective(
    name="t",
    kind="classification",
    prompt_template="Ticket: {text}\nTeam:",
    labels=["billing", "shipping", "account", "technical", "returns"],
)
SPEC = CleaningSpec()


def example(
    text: str,
    label: str = "billing",
    *,
    positive: bool = True,
    source: Source = "seed",
    at: datetime | None = None,
    example_id: str = "",
) -> TrainingExample:
    return TrainingExample(
        prompt=TASK.render(text),
        target=TASK.completion_for(label),
        positive=positive,
        source=source,
        at=at,
        example_id=example_id,
    )


def when(day: int) -> datetime:
    return datetime(2026, 3, day, 12, 0, tzinfo=UTC)


# --- scrub_pii ---------------------------------------------------------------------------


def test_emails_are_scrubbed_and_counted() -> None:
    text, counts = scrub_pii("Mail jane.doe+orders@example.co.uk or BOB_1@shop.io please")
    assert text == "Mail [EMAIL] or [EMAIL] please"
    assert counts == {"email": 2, "phone": 0, "card": 0}


@pytest.mark.parametrize(
    "phone",
    [
        "+1 415 555 0100",
        "(415) 555-0100",
        "415-555-0100",
        "07700 900123",
        "+44 20 7946 0958",
        "+14155550100",
        "1-800-555-0100",
    ],
)
def test_phone_formats_are_scrubbed(phone: str) -> None:
    text, counts = scrub_pii(f"call me at {phone} after 5pm")
    assert text == "call me at [PHONE] after 5pm"
    assert counts == {"email": 0, "phone": 1, "card": 0}


def test_phone_keeps_a_following_small_number() -> None:
    assert scrub_pii("call 415-555-0100 2 days from now")[0] == "call [PHONE] 2 days from now"


@pytest.mark.parametrize(
    "card", ["4111 1111 1111 1111", "4111-1111-1111-1111", "4111111111111111", "378282246310005"]
)
def test_luhn_valid_cards_are_scrubbed_as_cards_not_phones(card: str) -> None:
    text, counts = scrub_pii(f"my card {card} was charged twice")
    assert text == "my card [CARD] was charged twice"
    assert counts == {"email": 0, "phone": 0, "card": 1}


def test_card_followed_by_expiry_is_still_found() -> None:
    assert scrub_pii("card 4111 1111 1111 1111 12/27")[0] == "card [CARD] 12/27"


@pytest.mark.parametrize("number", ["1234 5678 9012 3456", "4111111111111112"])
def test_luhn_invalid_16_digits_is_not_a_card(number: str) -> None:
    text, counts = scrub_pii(f"reference {number} on the invoice")
    assert text == f"reference {number} on the invoice"
    assert counts == {"email": 0, "phone": 0, "card": 0}


@pytest.mark.parametrize(
    "text",
    [
        "I paid $45 for order 12345 in 2026 and waited 2 days",
        "delivered 2026-05-01 10:30, total 1,234.50",
        "server 192.168.100.200 is down",
        "ticket #987654 reopened",
    ],
)
def test_ordinary_numbers_are_untouched(text: str) -> None:
    assert scrub_pii(text) == (text, {"email": 0, "phone": 0, "card": 0})


def test_all_kinds_in_one_text() -> None:
    text, counts = scrub_pii("a@b.com, 415-555-0100, 4111 1111 1111 1111, c@d.org")
    assert text == "[EMAIL], [PHONE], [CARD], [EMAIL]"
    assert counts == {"email": 2, "phone": 1, "card": 1}


# --- normalize ---------------------------------------------------------------------------


def test_normalize_ignores_case_digits_punctuation_and_spacing() -> None:
    assert normalize("  Order #12345 is LATE!!\n again... ") == "order 0 is late again"
    assert normalize("order 999 is late, again") == normalize("Order #12345 is LATE!! again")
    assert normalize("order is late") != normalize("order 1 is late")


# --- clean -------------------------------------------------------------------------------


def test_planted_exact_and_near_duplicates_are_removed() -> None:
    data = [
        example("I was charged twice for order 1001", example_id="a"),
        example("My parcel never arrived", "shipping", example_id="b"),
        example("I was charged twice for order 1001", example_id="c"),  # exact
        example("I was charged twice for order 1001", example_id="d"),  # exact
        example("i was CHARGED twice, for order #2002!", example_id="e"),  # near
        example("My   parcel never arrived.", "shipping", example_id="f"),  # near
        example("Cannot log in to my account", "account", example_id="g"),
    ]
    kept, report = clean(data, TASK, SPEC)
    assert [e.example_id for e in kept] == ["a", "b", "g"]
    assert report.removed["exact_duplicate"] == 2
    assert report.removed["near_duplicate"] == 2
    assert report.input == 7
    assert report.output == 3


def test_correction_beats_seed_with_the_same_prompt() -> None:
    seed = example("Where is my refund for the broken kettle?", "billing", example_id="seed")
    fix = example(
        "where is my refund for the broken kettle",
        "returns",
        source="correction",
        at=when(2),
        example_id="fix",
    )
    kept, report = clean([seed, fix], TASK, SPEC)
    assert [(e.example_id, e.target) for e in kept] == [("fix", " returns")]
    assert report.removed["near_duplicate"] == 1


def test_conflicts_resolve_by_polarity_then_source_then_recency() -> None:
    text = "The app crashes when I open settings"
    data = [
        example(text, "account", positive=False, source="reviewer", at=when(9), example_id="neg"),
        example(text, "technical", source="thumbs_up", at=when(8), example_id="up"),
        example(text, "account", source="correction", at=when(1), example_id="old_fix"),
        example(text, "returns", source="correction", at=when(3), example_id="new_fix"),
        example(text, "billing", source="seed", example_id="seed"),
    ]
    kept, _ = clean(data, TASK, SPEC)
    assert [e.example_id for e in kept] == ["new_fix"]

    kept, _ = clean([*data, example(text, "technical", source="reviewer", at=when(1))], TASK, SPEC)
    assert [e.source for e in kept] == ["reviewer"]

    undated = example(text, "account", source="thumbs_up", example_id="undated")
    kept, _ = clean([data[1], undated], TASK, SPEC)
    assert [e.example_id for e in kept] == ["up"]


def test_removals_per_step_are_counted() -> None:
    data = [
        example("   "),  # empty prompt text
        TrainingExample(prompt="", target=" billing", positive=True, source="seed"),  # empty
        example("I need a new invoice", "  "),  # empty target
        example("@@@@ ### !!!!"),  # garbage
        example("aaaaaaaaaaaa"),  # garbage: one character repeated
        example("x" * 30 + " word " * 400),  # too long prompt
        example("Invoice is wrong", "billing " + "very " * 200),  # too long target
        example("My package is late", "marketing"),  # invalid label
        example("My package is late again", "no idea", positive=False, source="thumbs_down"),
        example("Refund please", "Returns."),  # a label parse_label accepts
    ]
    kept, report = clean(data, TASK, SPEC)
    assert report.removed == {
        "empty": 3,
        "garbage": 2,
        "too_long": 2,
        "invalid_label": 1,
        "exact_duplicate": 0,
        "near_duplicate": 0,
    }
    assert [e.target for e in kept] == [" no idea", " Returns."]
    assert report.output == 2
    assert list(report.removed) == list(STEPS)


def test_generation_tasks_have_no_label_check() -> None:
    task = TaskObjective(name="g", kind="generation", prompt_template="Q: {text}\nA:")
    data = [
        TrainingExample(prompt="Q: hi\nA:", target=" hello there", positive=True, source="seed")
    ]
    kept, report = clean(data, task, SPEC)
    assert kept == data
    assert report.removed["invalid_label"] == 0


def test_pii_is_scrubbed_before_the_other_steps() -> None:
    data = [
        example("Charge on 4111 1111 1111 1111, mail me at a@b.com", example_id="a"),
        example("Charge on 5555 5555 5555 4444, mail me at c@d.com", example_id="b"),
        example("Call me on 415-555-0100 about my login", "account", example_id="c"),
    ]
    kept, report = clean(data, TASK, SPEC)
    assert [e.prompt for e in kept] == [
        TASK.render("Charge on [CARD], mail me at [EMAIL]"),
        TASK.render("Call me on [PHONE] about my login"),
    ]
    assert report.scrubbed == {"email": 2, "phone": 1, "card": 2}
    assert report.removed["exact_duplicate"] == 1

    kept, report = clean(data, TASK, CleaningSpec(scrub_pii=False))
    assert [e.prompt for e in kept] == [e.prompt for e in data]
    assert report.scrubbed == dict.fromkeys(PII_KINDS, 0)


def test_limits_come_from_the_spec() -> None:
    spec = CleaningSpec(max_prompt_chars=40, max_target_chars=8, min_alnum_share=0.9)
    data = [
        example("short one"),
        example("this ticket text is far too long for the limit"),
        example("ok", "technical"),  # " technical" is 10 characters
        example("what?? why!!"),  # 7 of 10 characters are letters
    ]
    kept, report = clean(data, TASK, spec)
    assert [e.prompt for e in kept] == [TASK.render("short one")]
    assert report.removed["too_long"] == 2
    assert report.removed["garbage"] == 1


def test_as_metrics_is_flat() -> None:
    _, report = clean([example("hello"), example("hello")], TASK, SPEC)
    metrics = report.as_metrics()
    assert set(metrics) == {
        "clean_input",
        "clean_output",
        *(f"clean_removed_{step}" for step in STEPS),
        *(f"clean_scrubbed_{kind}" for kind in PII_KINDS),
    }
    assert metrics["clean_input"] == 2.0
    assert metrics["clean_output"] == 1.0
    assert metrics["clean_removed_exact_duplicate"] == 1.0
    assert all(isinstance(value, float) for value in metrics.values())


def test_empty_input() -> None:
    kept, report = clean([], TASK, SPEC)
    assert kept == []
    assert report == CleanReport(
        input=0,
        removed=dict.fromkeys(STEPS, 0),
        scrubbed=dict.fromkeys(PII_KINDS, 0),
        output=0,
    )
