"""Cleaning of training examples before a challenger is fine-tuned, as pure functions.

Feedback is noisy: users paste e-mail addresses, phone and card numbers (which must never
reach a model's weights), send blank or keyboard-mash tickets, rate the same ticket twice
or re-send it with another number in it. Each step below drops what would teach the model
nothing or the wrong thing, and the report counts every drop, so a run's metrics show what
cleaning did. Where several examples share a prompt, the most trusted label wins: a
reviewer's or user's correction beats the old seed label it corrects.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from string import Formatter

from refinery.common.task import CleaningSpec, TaskObjective
from refinery.retrainer.examples import Source, TrainingExample

STEPS = ("empty", "garbage", "too_long", "invalid_label", "exact_duplicate", "near_duplicate")
PII_KINDS = ("email", "phone", "card")

_SOURCE_PRIORITY: dict[Source, int] = {
    "reviewer": 4,
    "correction": 3,
    "thumbs_up": 2,
    "seed": 1,
    "thumbs_down": 0,
}

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# Numbers are matched whole: not glued to a word, a "+" (a phone's country code), another
# digit group, a time ("10:30") or a decimal ("12.50").
_BEFORE = r"(?<![\w+])(?<!\d[ .,:-])"
_AFTER = r"(?![\w:]|[.,]\d)"
# A run of digit groups split by single spaces or dashes; which part is a card is decided
# in code, since a card may be followed by an expiry month or another number.
_DIGIT_RUN = re.compile(_BEFORE + r"\d+(?:[ -]\d+)*" + _AFTER)
_DIGIT_GROUP = re.compile(r"\d+")
# Optional country code, optional area code in parentheses, then digit groups; groups after
# the first need two digits, so "415-555-0100 2 days" keeps its "2".
_PHONE = re.compile(
    _BEFORE + r"(?:\+\d{1,3}[ -]?)?(?:\(\d{1,5}\)[ -]?)?\d{1,15}(?:[ -]\d{2,6})*" + _AFTER
)
_CARD_DIGITS = (13, 19)
_PHONE_DIGITS = (9, 15)  # E.164 allows at most 15
_DIGITS = re.compile(r"\d+")
_PUNCTUATION = re.compile(r"[^\w\s]|_")


@dataclass
class CleanReport:
    """What one cleaning pass did: examples in and out, drops per step, PII replaced."""

    input: int
    removed: dict[str, int]
    scrubbed: dict[str, int]
    output: int

    def as_metrics(self) -> dict[str, float]:
        """Flat numbers for MLflow, which takes no nested metrics."""
        metrics = {"clean_input": float(self.input), "clean_output": float(self.output)}
        metrics.update({f"clean_removed_{k}": float(v) for k, v in self.removed.items()})
        metrics.update({f"clean_scrubbed_{k}": float(v) for k, v in self.scrubbed.items()})
        return metrics


def _luhn_ok(digits: str) -> bool:
    """The card checksum: it tells a card number from any other long number."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _scrub_cards(run: str) -> tuple[str, int]:
    """Replace card numbers in one digit run, trying whole groups, longest first, so a card
    followed by an expiry month or another number is still found."""
    groups = [m.span() for m in _DIGIT_GROUP.finditer(run)]
    pieces: list[str] = []
    done, count, i = 0, 0, 0
    while i < len(groups):
        for j in range(len(groups) - 1, i - 1, -1):
            start, end = groups[i][0], groups[j][1]
            digits = "".join(c for c in run[start:end] if c.isdigit())
            low, high = _CARD_DIGITS
            if low <= len(digits) <= high and _luhn_ok(digits):
                pieces += [run[done:start], "[CARD]"]
                done, count, i = end, count + 1, j + 1
                break
        else:
            i += 1
    pieces.append(run[done:])
    return "".join(pieces), count


def _is_phone(candidate: str) -> bool:
    """Enough digits, and written like a phone: a bare run of digits (an order number, an
    id) counts only with a leading "+" or trunk "0"."""
    digits = sum(c.isdigit() for c in candidate)
    low, high = _PHONE_DIGITS
    if not low <= digits <= high:
        return False
    return candidate.startswith(("+", "0")) or any(c in candidate for c in "( -")


def scrub_pii(text: str) -> tuple[str, dict[str, int]]:
    """Replace e-mail addresses, card numbers and phone numbers by placeholders, counting
    each kind; cards go before phones, so a card is never counted as a phone."""
    counts = dict.fromkeys(PII_KINDS, 0)
    text, counts["email"] = _EMAIL.subn("[EMAIL]", text)

    def card(match: re.Match[str]) -> str:
        scrubbed, found = _scrub_cards(match.group())
        counts["card"] += found
        return scrubbed

    def phone(match: re.Match[str]) -> str:
        if not _is_phone(match.group()):
            return match.group()
        counts["phone"] += 1
        return "[PHONE]"

    text = _DIGIT_RUN.sub(card, text)
    text = _PHONE.sub(phone, text)
    return text, counts


def normalize(text: str) -> str:
    """The form two prompts share when they differ only in case, numbers, punctuation or
    spacing: the key of near-duplicate detection."""
    text = _DIGITS.sub("0", text.lower())
    text = _PUNCTUATION.sub("", text)
    return " ".join(text.split())


def _template_parts(template: str) -> tuple[str, str] | None:
    """The fixed text before and after ``{text}`` in the prompt template, if it has exactly
    that one field."""
    before: list[str] = []
    after: list[str] = []
    seen = False
    try:
        for literal, field_name, _, _ in Formatter().parse(template):
            (after if seen else before).append(literal)
            if field_name is None:
                continue
            if field_name != "text" or seen:
                return None
            seen = True
    except ValueError:
        return None
    return ("".join(before), "".join(after)) if seen else None


def _user_text(prompt: str, parts: tuple[str, str] | None) -> str:
    """What the user wrote: the prompt without the template around it, so the template's own
    words do not make a blank or garbage ticket look fine."""
    if parts is None:
        return prompt
    before, after = parts
    fits = len(prompt) >= len(before) + len(after)
    if fits and prompt.startswith(before) and prompt.endswith(after):
        return prompt[len(before) : len(prompt) - len(after)]
    return prompt


def _is_garbage(text: str, min_alnum_share: float) -> bool:
    chars = [c for c in text if not c.isspace()]
    if not chars:
        return False
    if len({c.lower() for c in chars}) == 1:
        return True
    return sum(c.isalnum() for c in chars) / len(chars) < min_alnum_share


def _rejection(
    example: TrainingExample,
    task: TaskObjective,
    spec: CleaningSpec,
    parts: tuple[str, str] | None,
) -> str | None:
    """The first per-example step that drops this example, or None to keep it."""
    text = _user_text(example.prompt, parts)
    if not text.strip() or not example.target.strip():
        return "empty"
    if _is_garbage(text, spec.min_alnum_share):
        return "garbage"
    if len(example.prompt) > spec.max_prompt_chars or len(example.target) > spec.max_target_chars:
        return "too_long"
    if (
        task.kind == "classification"
        and example.positive
        and task.parse_label(example.target) is None
    ):
        return "invalid_label"
    return None


def _rank(example: TrainingExample) -> tuple[bool, int, bool, float]:
    """How much an example is trusted: positive first, then by source, then the newest."""
    at = example.at
    return (
        example.positive,
        _SOURCE_PRIORITY[example.source],
        at is not None,
        at.timestamp() if at is not None else 0.0,
    )


def _keep_best(
    examples: list[TrainingExample], key: Callable[[TrainingExample], Hashable]
) -> list[TrainingExample]:
    """One example per key, the best ranked (the first on a tie), in input order."""
    best: dict[Hashable, int] = {}
    for index, example in enumerate(examples):
        k = key(example)
        if k not in best or _rank(example) > _rank(examples[best[k]]):
            best[k] = index
    chosen = set(best.values())
    return [example for index, example in enumerate(examples) if index in chosen]


def clean(
    examples: Sequence[TrainingExample], task: TaskObjective, spec: CleaningSpec
) -> tuple[list[TrainingExample], CleanReport]:
    """Scrub PII, drop bad examples and duplicates; the survivors keep their input order."""
    removed = dict.fromkeys(STEPS, 0)
    scrubbed = dict.fromkeys(PII_KINDS, 0)
    parts = _template_parts(task.prompt_template)
    kept: list[TrainingExample] = []
    for example in examples:
        if spec.scrub_pii:
            prompt, prompt_counts = scrub_pii(example.prompt)
            target, target_counts = scrub_pii(example.target)
            for kind in PII_KINDS:
                scrubbed[kind] += prompt_counts[kind] + target_counts[kind]
            if (prompt, target) != (example.prompt, example.target):
                example = example.with_text(prompt, target)
        reason = _rejection(example, task, spec, parts)
        if reason is None:
            kept.append(example)
        else:
            removed[reason] += 1

    unique = _keep_best(kept, lambda e: (e.prompt, e.target, e.positive))
    removed["exact_duplicate"] = len(kept) - len(unique)
    distinct = _keep_best(unique, lambda e: normalize(e.prompt))
    removed["near_duplicate"] = len(unique) - len(distinct)

    report = CleanReport(
        input=len(examples), removed=removed, scrubbed=scrubbed, output=len(distinct)
    )
    return distinct, report
