"""The poisoning defence on feedback as plain logic: one rating per answer, contradicted
corrections held, no key or user over its share (services/refinery/retrainer/sources.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from refinery.common.shares import share_cap
from refinery.common.task import FeedbackSpec, TaskObjective
from refinery.retrainer.examples import Source, TrainingExample
from refinery.retrainer.sources import cap_share, contradicted, curate

TASK = TaskObjective(
    name="t", kind="classification", prompt_template="{text}", labels=["billing", "shipping"]
)
T0 = datetime(2026, 11, 30, tzinfo=UTC)
_count = iter(range(1_000_000))


def rated(
    prompt: str,
    target: str,
    source: Source = "thumbs_up",
    key: str = "app",
    user: str | None = None,
    prediction: str | None = None,
) -> TrainingExample:
    n = next(_count)
    return TrainingExample(
        prompt=prompt,
        target=target,
        positive=source != "thumbs_down",
        source=source,
        at=T0 + timedelta(seconds=n),
        example_id=f"e{n}",
        prediction_id=prediction or f"p{n}",
        key_id=key,
        user=user or f"u{n}",
    )


def test_share_caps() -> None:
    assert share_cap({"a": 10}, 0.1) == {"a": 10}  # one source alone: nothing to protect
    assert share_cap({"app": 100, "flood": 500}, 0.5) == {"app": 100, "flood": 100}
    many = {f"u{i}": 2 for i in range(50)} | {"loud": 40}
    caps = share_cap(many, 0.1)
    assert caps["loud"] == 11 and caps["u0"] == 2  # 11 <= 0.1 * (100 + 11)
    # Too few sources for a 10% share: nothing is cut (a big honest source stays whole).
    assert share_cap({"a": 9, "b": 5, "c": 1}, 0.1) == {"a": 9, "b": 5, "c": 1}


def test_one_key_flooding_under_many_user_names_is_capped_to_the_others_together() -> None:
    app = [rated(f"ticket {i}", " billing", key="app") for i in range(100)]
    flood = [
        rated(f"other {i}", " shipping", "correction", key="flood", user=f"name{i}")
        for i in range(500)
    ]
    kept = cap_share(app + flood, lambda e: e.key_id, 0.5)
    assert sum(e.key_id == "flood" for e in kept) == 100
    assert sum(e.key_id == "app" for e in kept) == 100
    # The newest of the over-share key are the ones kept.
    assert {e.prompt for e in kept if e.key_id == "flood"} == {
        f"other {i}" for i in range(400, 500)
    }


def test_a_correction_many_independent_users_contradict_is_held() -> None:
    votes = [rated("where is my refund", " billing", user=f"u{i}") for i in range(3)]
    wrong = rated("Where is my refund ", " shipping", "correction", key="flood", user="m")
    backed = rated("where is my refund", " shipping", "correction", key="flood", user="m2")
    assert contradicted([*votes, wrong], TASK, 3) == {wrong.example_id}
    assert contradicted([*votes, wrong], TASK, 4) == set()  # too few against
    # Three against, two for (the other correction and itself are not counted twice): held.
    assert contradicted([*votes, wrong, backed], TASK, 3) == {wrong.example_id, backed.example_id}
    # One user repeating themselves is one voice.
    echo = [rated("where is my refund", " billing", user="same") for _ in range(5)]
    assert contradicted([*echo, wrong], TASK, 3) == set()
    # A seed label counts as one voice against.
    two = votes[:2]
    assert contradicted([*two, wrong], TASK, 3, {"where is my refund": " billing"}) == {
        wrong.example_id
    }


def test_free_text_answers_agree_when_they_say_the_same() -> None:
    reply = TaskObjective(name="r", kind="generation", prompt_template="{text}\nReply:")
    votes = [
        rated("lamp offline", " Please re-pair the lamp in the app.", user=f"u{i}")
        for i in range(3)
    ]
    same = rated("lamp offline", " Please re-pair your lamp in the app.", "correction", user="x")
    other = rated("lamp offline", " Your refund is on its way.", "correction", user="y")
    assert contradicted([*votes, same, other], reply, 3) == {other.example_id}


def test_curate_reports_what_it_did() -> None:
    first = rated("my parcel", " billing", "thumbs_down", prediction="p-one")
    again = [
        rated("my parcel", " shipping", "correction", key="flood", user=f"n{i}", prediction="p-one")
        for i in range(5)
    ]
    kept, held, report = curate([first, *again], TASK, FeedbackSpec())
    assert [e.user for e in kept] == ["n4"] and held == []  # the newest rating of the answer
    assert (report.input, report.superseded, report.output) == (6, 5, 1)
    assert (report.keys, report.users) == (2, 6)


def test_ratings_that_name_no_user_are_not_capped_as_one_user() -> None:
    anonymous = [rated(f"t{i}", " billing", key="app") for i in range(200)]
    anonymous = [TrainingExample(**{**e.__dict__, "user": None}) for e in anonymous]
    named = [rated(f"n{i}", " billing", key="app", user=f"u{i % 20}") for i in range(40)]
    loud = [rated(f"l{i}", " shipping", key="app", user="loud") for i in range(60)]
    spec = FeedbackSpec(max_user_share=0.1)
    kept, _, report = curate([*anonymous, *named, *loud], TASK, spec)
    assert sum(e.user is None for e in kept) == 200
    # 26 <= 0.1 * (200 + 40 + 26): a tenth of all rated examples, the anonymous included.
    assert sum(e.user == "loud" for e in kept) == 26
    assert report.capped_user == 60 - 26
