"""Support tickets with many phrasings, typos and noise, in two product domains, as examples
of the task's kind: a team to route to (classification), or the one-sentence reply to give
(generation: after a prompt; chat: to a system prompt and the ticket as the user's turn).

``retail`` is what the first champion is trained on; ``smart_home`` is a new product line
with its own vocabulary, a label mix leaning to ``technical`` and replies of its own: the
shift the loop must recover from. ``fitness`` (a training app and home gym equipment,
leaning to ``account`` and ``billing``) is a shift the demo never plays: tests of
recovery use it, so nothing tuned on the demo's shift can pass them by accident.
Generation is seeded, so the same seed gives the same corpus, and every kind draws the
same tickets (the triage corpus is the reference: the free-text kinds consume the random
stream exactly as it does).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from refinery.common.datasets import LabeledText
from refinery.common.events import ChatTurn
from refinery.common.task import TaskObjective
from refinery.demo.replies import reply_for

DOMAINS = ("retail", "smart_home", "fitness")

# The chat task's fixed system prompt: the conversation every demo chat request starts with.
SYSTEM_PROMPT = "You are a support agent. Answer in one sentence."

# Things people mention, per domain.
_PRODUCTS = {
    "retail": [
        "order",
        "jacket",
        "pair of shoes",
        "blender",
        "coffee maker",
        "backpack",
        "phone case",
        "desk lamp",
        "package",
        "gift card",
        "sofa cover",
        "headphones",
    ],
    "smart_home": [
        "thermostat",
        "doorbell camera",
        "smart plug",
        "hub",
        "motion sensor",
        "smart lock",
        "light strip",
        "security camera",
        "smoke detector",
        "bridge",
    ],
    "fitness": [
        "rowing machine",
        "treadmill",
        "exercise bike",
        "heart rate strap",
        "kettlebell set",
        "yoga mat",
    ],
}

# Per label, per domain: sentence patterns. {p} is a product, {n} a number, {d} a day.
_PATTERNS: dict[str, dict[str, list[str]]] = {
    "billing": {
        "retail": [
            "I was charged twice for my {p}",
            "why is there an extra fee of ${n} on my bill",
            "the invoice for my {p} shows the wrong amount",
            "my card got billed ${n} but I cancelled the {p}",
            "can you explain this charge from {d}",
            "refund the double payment please, it was ${n}",
            "the promo code did not apply and I paid full price for the {p}",
            "I need a copy of the receipt for my {p}",
        ],
        "smart_home": [
            "my monitoring subscription renewed at ${n} without warning",
            "I was billed for the premium plan on my {p} but I'm on basic",
            "why does the cloud recording plan cost ${n} now",
            "cancel the subscription for the {p}, you still charge me",
            "the app store charged me twice for the {p} plan",
        ],
        "fitness": [
            "the annual membership renewed at ${n} and I wanted monthly",
            "I paid for the {p} twice this month",
            "the family plan charge is ${n} higher than advertised",
            "stop charging me for the {p}, I cancelled in {d}",
        ],
    },
    "shipping": {
        "retail": [
            "where is my {p}, it was supposed to arrive {d}",
            "tracking for my {p} hasn't updated in {n} days",
            "the courier says delivered but no {p} here",
            "can I change the delivery address for my {p}",
            "my {p} is stuck in customs",
            "delivery is late by {n} days, what is going on",
            "the box arrived crushed and the {p} is missing",
            "when will my {p} ship",
        ],
        "smart_home": [
            "my {p} preorder still says processing after {n} days",
            "the replacement {p} you promised never shipped",
            "installer kit for the {p} didn't arrive with the order",
            "where's the tracking number for my {p}",
        ],
        "fitness": [
            "the {p} delivery slot was missed again",
            "freight for my {p} has been pending {n} days",
            "the {p} arrived without the assembly screws",
        ],
    },
    "account": {
        "retail": [
            "I can't log in to my account",
            "reset my password please, the link expired",
            "how do I change the email on my account",
            "please delete my account and all my data",
            "someone else used my account to order a {p}",
            "I never got the verification email",
            "update my phone number on the profile",
            "two-factor code never arrives, locked out",
        ],
        "smart_home": [
            "how do I share access to my {p} with my partner",
            "I can't sign in to the home app after the update",
            "remove my old house from the account",
            "transfer ownership of the {p} to the new tenant",
            "the invite to the household never arrived",
        ],
        "fitness": [
            "my workout history vanished after I logged in again",
            "how do I pause my membership for {n} weeks",
            "link my watch to the training app account",
            "merge my two profiles, one has all my workouts",
            "my coach can't see my {p} progress",
        ],
    },
    "technical": {
        "retail": [
            "the website crashes when I pay",
            "the checkout page keeps spinning",
            "your app freezes when I open my orders",
            "the {p} won't turn on out of the box",
            "error {n} when I try to apply a coupon",
            "the size chart page is blank",
        ],
        "smart_home": [
            "my {p} keeps going offline every night",
            "the {p} won't pair with the hub",
            "firmware update failed on the {p}, stuck at {n} percent",
            "the {p} shows the wrong temperature",
            "{p} disconnects from wifi after the router restart",
            "the {p} is blinking red and doesn't respond",
            "live view on the {p} lags by {n} seconds",
            "the automation that turns on the {p} at sunset stopped working",
            "zigbee {p} not found when scanning",
            "after the update the {p} drains its battery in {n} days",
        ],
        "fitness": [
            "the {p} screen freezes during a class",
            "resistance on the {p} stays at level {n}",
            "the {p} loses bluetooth mid workout",
            "calories on the {p} are way off",
        ],
    },
    "returns": {
        "retail": [
            "I want to return my {p}",
            "how do I send back the {p}, it doesn't fit",
            "the {p} is defective, I need a replacement",
            "can I exchange the {p} for a bigger size",
            "return label for the {p} isn't working",
            "I returned the {p} {n} days ago and no refund yet",
            "wrong item, I ordered a {p} and got something else",
        ],
        "smart_home": [
            "I want to return the {p}, it doesn't work with my heating",
            "send me a return label for the {p}",
            "the {p} is dead on arrival, exchange it",
            "can I return the {p} after installing it",
        ],
        "fitness": [
            "the {p} is too loud for my flat, can I send it back",
            "return the {p}, it squeaks after {n} days",
            "collect the {p}, I changed my mind",
        ],
    },
}

# Label mix per domain: the new product line is mostly technical trouble.
_LABEL_WEIGHTS = {
    "retail": {
        "billing": 0.22,
        "shipping": 0.26,
        "account": 0.18,
        "technical": 0.12,
        "returns": 0.22,
    },
    "smart_home": {
        "billing": 0.12,
        "shipping": 0.08,
        "account": 0.15,
        "technical": 0.55,
        "returns": 0.10,
    },
    "fitness": {
        "billing": 0.30,
        "shipping": 0.10,
        "account": 0.35,
        "technical": 0.15,
        "returns": 0.10,
    },
}

_OPENERS = [
    "",
    "",
    "",
    "hi, ",
    "hello, ",
    "hey ",
    "good morning, ",
    "urgent: ",
    "help! ",
    "dear support, ",
    "hi team, ",
]
_CLOSERS = [
    "",
    "",
    "",
    " thanks",
    " thank you!",
    " pls help",
    " asap",
    " this is ridiculous",
    " any update?",
    " cheers",
    "!!",
    "?",
]
_DAYS = ["monday", "tuesday", "yesterday", "last week", "on the 3rd", "friday", "today"]


def _typo(word: str, rng: random.Random) -> str:
    if len(word) < 4:
        return word
    i = rng.randrange(1, len(word) - 1)
    kind = rng.random()
    if kind < 0.4:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]  # swap
    if kind < 0.7:
        return word[:i] + word[i + 1 :]  # drop
    return word[:i] + word[i] + word[i:]  # double


def _noisy(text: str, rng: random.Random, typo_rate: float) -> str:
    words = [(_typo(w, rng) if rng.random() < typo_rate else w) for w in text.split()]
    out = " ".join(words)
    r = rng.random()
    if r < 0.15:
        out = out.lower()
    elif r < 0.2:
        out = out.upper()
    elif r < 0.5:
        out = out[:1].upper() + out[1:]
    return out


def _draw(label: str, domain: str, rng: random.Random, typo_rate: float) -> tuple[str, str]:
    """A ticket of ``label`` in ``domain``: the pattern it was written from, and its text."""
    pattern = rng.choice(_PATTERNS[label][domain])
    text = pattern.format(
        p=rng.choice(_PRODUCTS[domain]), n=rng.randint(2, 90), d=rng.choice(_DAYS)
    )
    return pattern, _noisy(rng.choice(_OPENERS) + text + rng.choice(_CLOSERS), rng, typo_rate)


def ticket(label: str, domain: str, rng: random.Random, typo_rate: float = 0.06) -> str:
    """One ticket text of ``label`` in ``domain``."""
    return _draw(label, domain, rng, typo_rate)[1]


def reply_completion(task: TaskObjective, reply: str) -> str:
    """A reply as the task's target (``TaskObjective.correction_target``)."""
    return task.correction_target(reply)


def _example(task: TaskObjective, label: str, pattern: str, text: str, domain: str) -> LabeledText:
    """The ticket as one example of the task's kind."""
    prompt = task.render(text)
    if task.kind == "classification":
        return LabeledText(prompt=prompt, completion=task.completion_for(label), segment=domain)
    completion = reply_completion(task, reply_for(pattern))
    if task.kind == "generation":
        return LabeledText(prompt=prompt, completion=completion, segment=domain)
    turns = (ChatTurn(role="system", content=SYSTEM_PROMPT), ChatTurn(role="user", content=prompt))
    return LabeledText(prompt=prompt, completion=completion, segment=domain, messages=turns)


def generate(
    task: TaskObjective, n: int, seed: int, domain: str = "retail", typo_rate: float = 0.06
) -> list[LabeledText]:
    """``n`` tickets of ``domain`` as examples of the task's kind, rendered with its template.

    Classification draws the task's labels that the corpus knows; free text draws every
    team's tickets, so it sees the same tickets as a triage task with all five labels.
    """
    if domain not in DOMAINS:
        raise ValueError(f"domain {domain!r} is not one of {DOMAINS}")
    rng = random.Random(f"{seed}:{domain}")
    weights = _LABEL_WEIGHTS[domain]
    free_text = task.kind != "classification"
    labels: Sequence[str] = (
        list(weights) if free_text else [lab for lab in task.labels if lab in weights]
    )
    if not labels:
        raise ValueError(f"the demo corpus has none of the task's labels {task.labels}")
    out = []
    for _ in range(n):
        label = rng.choices(labels, weights=[weights[lab] for lab in labels])[0]
        pattern, text = _draw(label, domain, rng, typo_rate)
        out.append(_example(task, label, pattern, text, domain))
    return out
