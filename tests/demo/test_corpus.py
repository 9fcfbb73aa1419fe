"""The demo corpus: the triage corpus stays as it was, and the free-text kinds (a reply per
ticket, as prompt/completion or as a chat) are drawn from the same tickets, deterministically."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import pytest

from refinery.common.datasets import LabeledText
from refinery.common.task import TaskObjective
from refinery.demo.corpus import DOMAINS, SYSTEM_PROMPT, generate
from refinery.demo.replies import phrasings, references

LABELS = ["billing", "shipping", "account", "technical", "returns"]
TRIAGE = TaskObjective(
    name="support-triage",
    kind="classification",
    prompt_template="Ticket: {text}\nTeam:",
    labels=LABELS,
    max_new_tokens=4,
)
REPLY = TaskObjective(
    name="support-reply", kind="generation", prompt_template="Ticket: {text}\nReply:"
)
CHAT = TaskObjective(name="support-reply-chat", kind="chat")

# sha256 of the triage corpus as generated at HEAD 41bb838, before the free-text kinds came:
# seed 7, 500 tickets per domain, every (prompt, completion, segment) as a JSON line.
HEAD_DIGESTS = {
    "retail": "afa3ce6115290fe7349da961c3dee1bb5788df4f9b039075f7000a711a8d0e5b",
    "smart_home": "28016f6dcc87811914492bb94c3eab72851d55a938c1cb621b5e3d5195b93af2",
}
# ...and a task with a subset of the labels (one the corpus does not know), more typos.
HEAD_SUBSET_DIGEST = "879abde1f33705edc129b08f85e4f2d235e24186b157ce00f88d0d56432447fb"


def _digest(examples: Sequence[LabeledText]) -> str:
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([ex.prompt, ex.completion, ex.segment]).encode() + b"\n")
    return h.hexdigest()


def _ticket(task: TaskObjective, ex: LabeledText) -> str:
    """The ticket text an example was rendered from."""
    prefix, suffix = task.prompt_template.split("{text}")
    return ex.prompt.removeprefix(prefix).removesuffix(suffix)


@pytest.mark.parametrize("domain", ["retail", "smart_home"])
def test_triage_corpus_is_unchanged(domain: str) -> None:
    assert _digest(generate(TRIAGE, 500, seed=7, domain=domain)) == HEAD_DIGESTS[domain]


def test_triage_corpus_with_a_label_subset_is_unchanged() -> None:
    task = TaskObjective(
        name="t",
        kind="classification",
        prompt_template="Q: {text}\nA:",
        labels=["technical", "billing", "other"],
    )
    examples = generate(task, 200, seed=3, domain="smart_home", typo_rate=0.2)
    assert _digest(examples) == HEAD_SUBSET_DIGEST


@pytest.mark.parametrize("task", [TRIAGE, REPLY, CHAT], ids=lambda t: t.kind)
def test_same_seed_same_corpus(task: TaskObjective) -> None:
    for domain in ("retail", "smart_home"):
        first = generate(task, 200, seed=11, domain=domain)
        assert first == generate(task, 200, seed=11, domain=domain)
        assert first != generate(task, 200, seed=12, domain=domain)


@pytest.mark.parametrize("task", [REPLY, CHAT], ids=lambda t: t.kind)
def test_free_text_is_written_for_the_triage_tickets(task: TaskObjective) -> None:
    for domain in ("retail", "smart_home"):
        triage = generate(TRIAGE, 300, seed=7, domain=domain)
        free = generate(task, 300, seed=7, domain=domain)
        assert [_ticket(TRIAGE, ex) for ex in triage] == [_ticket(task, ex) for ex in free]
        assert {ex.segment for ex in free} == {domain}


def test_both_domains_have_their_own_replies() -> None:
    retail = {ex.completion for ex in generate(REPLY, 1000, seed=7, domain="retail")}
    smart = {ex.completion for ex in generate(REPLY, 1000, seed=7, domain="smart_home")}
    assert len(retail) >= 10 and len(smart) >= 10
    assert not retail & smart  # the new product line needs replies the first model never saw


def test_the_reply_depends_on_the_product_line_and_the_issue() -> None:
    """The same team answers differently per product line, and per issue within one."""
    for label in LABELS:
        by_domain = {}
        for domain in ("retail", "smart_home"):
            triage = generate(TRIAGE, 1500, seed=5, domain=domain)
            replies = generate(REPLY, 1500, seed=5, domain=domain)
            by_domain[domain] = {
                r.completion
                for t, r in zip(triage, replies, strict=True)
                if t.completion == f" {label}"
            }
        assert by_domain["retail"] and by_domain["smart_home"], label
        assert not by_domain["retail"] & by_domain["smart_home"], label
        assert len(by_domain["retail"] | by_domain["smart_home"]) >= 3, label
    returns = [ex for ex in generate(REPLY, 500, seed=1) if "return my" in ex.prompt.lower()]
    assert returns
    assert {ex.completion for ex in returns} == {
        " You can return it within 30 days and we will refund you."
    }


def test_every_reference_is_used_and_the_set_is_small() -> None:
    used = {
        ex.completion.strip()
        for domain in DOMAINS
        for ex in generate(REPLY, 3000, seed=7, domain=domain)
    }
    assert used == set(references())
    assert 20 <= len(references()) <= 45  # a few dozen: the tiny offline model can learn it
    words = {w.strip(".,").lower() for ref in references() for w in ref.split()}
    assert len(words) < 200  # one short vocabulary (175 words with three domains)


def test_generation_rows_are_prompt_and_reply() -> None:
    for ex in generate(REPLY, 100, seed=7, domain="smart_home"):
        assert ex.prompt.startswith("Ticket: ") and ex.prompt.endswith("\nReply:")
        assert ex.messages is None
        assert ex.completion.startswith(" ") and ex.completion.strip() in references()


def test_chat_rows_are_system_prompt_and_ticket_answered_by_the_reply() -> None:
    replies = generate(REPLY, 100, seed=7, domain="smart_home")
    chats = generate(CHAT, 100, seed=7, domain="smart_home")
    for reply, chat in zip(replies, chats, strict=True):
        assert chat.messages is not None
        assert [(t.role, t.content) for t in chat.messages] == [
            ("system", SYSTEM_PROMPT),
            ("user", _ticket(REPLY, reply)),
        ]
        assert chat.prompt == chat.messages[-1].content  # the last user turn
        assert chat.completion == reply.completion.strip()  # the assistant's whole message
        assert chat.segment == "smart_home"
        line = json.loads(chat.to_line())  # the OpenAI chat format the retrainer reads
        assert line["messages"][-1] == {"role": "assistant", "content": chat.completion}
        assert LabeledText.model_validate_json(chat.to_line()) == chat


def test_phrasings_belong_to_one_reference() -> None:
    for ref in references():
        options = phrasings(ref)
        assert options[0] == ref and len(options) >= 3
        assert all(phrasings(p) == options for p in options)
    with pytest.raises(ValueError, match="not a reference reply"):
        phrasings("Have a nice day.")


def test_unknown_domain_and_labels_fail() -> None:
    with pytest.raises(ValueError, match="domain"):
        generate(REPLY, 1, seed=0, domain="garden")
    task = TRIAGE.model_copy(update={"labels": ["spam"]})
    with pytest.raises(ValueError, match="none of the task's labels"):
        generate(task, 1, seed=0)
