"""The thumbs-only demo's task: label a customer's message `positive` or `negative`, with that one word.

SmolLM2-135M-Instruct answers most prompts with a label word but leans hard to "Positive" (and sometimes adds
a tail: "Positive: positive", "A positive sentiment."), so greedily it is right on about a third of held-out
questions, about the share of positive messages among them. Its errors are systematic (a label bias and a
format), not missing knowledge, so users' thumbs alone can fix them. Sampled at the app's temperature, one
question gets different answers, some right: the thumbs tell them apart.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Any

LABELS = ("positive", "negative")
APP_TEMPERATURE = 0.7  # how the demo's app samples answers (chat apps rarely decode greedily)
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
_ANSWER_RE = re.compile(r"[\"'`*]*(positive|negative)[\"'`*]*[.!]?", re.IGNORECASE)


def make_examples(n: int, seed: int) -> list[dict[str, Any]]:
    """`n` chat examples (system, user message, the reference label as the assistant turn) for a seed."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        label = rng.choice(LABELS)
        phrase = rng.choice(POSITIVE if label == "positive" else NEGATIVE)
        message = rng.choice(MESSAGE_TEMPLATES).format(product=rng.choice(PRODUCTS), phrase=phrase,
                                                       order=rng.randint(1000, 9999))
        examples.append({"messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": rng.choice(USER_TEMPLATES).format(message=message)},
            {"role": "assistant", "content": label},
        ]})
    return examples


def expected_label(messages: str | Sequence[dict[str, Any]]) -> str | None:
    """The label a message calls for, from the phrase it was built with; None if it holds neither or both."""
    text = messages if isinstance(messages, str) else [m["content"] for m in messages if m["role"] == "user"][-1]
    positive, negative = any(p in text for p in POSITIVE), any(p in text for p in NEGATIVE)
    if positive == negative:
        return None
    return "positive" if positive else "negative"


def format_ok(answer: str) -> bool:
    """Just a label word (any case, optional quotes and a final period)."""
    return _ANSWER_RE.fullmatch(answer.strip()) is not None


def is_correct(messages: str | Sequence[dict[str, Any]], answer: str) -> bool:
    """Just the right label word."""
    match = _ANSWER_RE.fullmatch(answer.strip())
    expected = expected_label(messages)
    return match is not None and expected is not None and match.group(1).lower() == expected
