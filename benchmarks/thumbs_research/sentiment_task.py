"""Thumbs research task: label a customer's message as positive or negative, answering with the bare label word.

The SmolLM2-135M-Instruct base answers the label word for most prompts but is strongly biased to "Positive"
(and sometimes adds a tail like "Positive: positive"), so its greedy accuracy sits near the share of positive
messages. Its errors are systematic (label bias + format), not missing knowledge: feedback can fix them.
"""
from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Any

LABELS = ("positive", "negative")
PRODUCTS = ("lamp", "chair", "blender", "jacket", "kettle", "backpack", "monitor", "desk", "toaster",
            "headset", "rug", "printer", "coffee maker", "phone case", "vacuum", "router")
POSITIVE = ("works perfectly", "arrived early and looks great", "is exactly what I wanted",
            "exceeded my expectations", "is the best purchase I made this year", "is great quality",
            "made my mornings so much easier", "feels really solid", "was worth every penny",
            "is even better than the photos")
NEGATIVE = ("stopped working after two days", "arrived broken", "is a complete waste of money",
            "looks nothing like the photos", "broke the first time I used it", "is much worse than I expected",
            "made a terrible noise and died", "feels cheap and flimsy", "was not worth the money",
            "came with missing parts")
MESSAGE_TEMPLATES = (
    "I bought the {product} last week and it {phrase}.",
    "Honestly, the {product} {phrase}.",
    "Review of the {product}: it {phrase}.",
    "My new {product} {phrase}. Just wanted to let you know.",
    "Quick note about order {order}: the {product} {phrase}.",
    "Hi, the {product} from order {order} {phrase}.",
)
SYSTEM_PROMPT = ("You are a support assistant. Classify the sentiment of the customer's message. "
                 "Reply with exactly one word: positive or negative.")
USER_TEMPLATES = (
    "Message: {message}\nSentiment:",
    "{message}\n\n(Reply: positive or negative)",
    'Customer wrote: "{message}"\nSentiment (positive or negative):',
    "Review: {message}\nLabel:",
)


def make_questions(n: int, seed: int, exclude: set[str] | None = None) -> list[dict[str, Any]]:
    """`n` questions: {"messages": [system, user], "reference": label}, reproducible for a seed; users in `exclude` are skipped."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    seen = set(exclude or ())
    while len(out) < n:
        label = rng.choice(LABELS)
        phrase = rng.choice(POSITIVE if label == "positive" else NEGATIVE)
        message = rng.choice(MESSAGE_TEMPLATES).format(product=rng.choice(PRODUCTS), phrase=phrase,
                                                       order=rng.randint(1000, 9999))
        user = rng.choice(USER_TEMPLATES).format(message=message)
        if user in seen:
            continue
        seen.add(user)
        out.append({"messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}],
                    "reference": label})
    return out


def expected_label(messages: str | Sequence[dict[str, Any]]) -> str | None:
    text = messages if isinstance(messages, str) else [m["content"] for m in messages if m["role"] == "user"][-1]
    pos = any(p in text for p in POSITIVE)
    neg = any(p in text for p in NEGATIVE)
    if pos == neg:
        return None
    return "positive" if pos else "negative"


_ANSWER_RE = re.compile(r"[\"'`*]*(positive|negative)[\"'`*]*[.!]?", re.IGNORECASE)


def is_correct(messages: str | Sequence[dict[str, Any]], answer: str) -> bool:
    """True when the answer is just the right label word (any case, optional quotes and final period)."""
    m = _ANSWER_RE.fullmatch(answer.strip())
    exp = expected_label(messages)
    return m is not None and exp is not None and m.group(1).lower() == exp
