"""The demo's strict-answer-format task: read an order number and status, answer in strict JSON.

The answer copies two things from the question into `{"order_id": 4821, "status": "shipped"}`. Copying is
learnable by the tiny demo model in well under a minute on 2 CPU cores (arithmetic would not be), and the
format is strict enough that a random base model never produces it: adherence goes from 0 to ~1 after tuning.
Used by the trainer tests, the registry's offline judge tests and the end-to-end demo.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from typing import Any

STATUSES = ("pending", "shipped", "delivered", "cancelled", "returned")

SYSTEM_PROMPT = 'Answer with JSON only: {"order_id": <number>, "status": "<status>"}.'

# Several phrasings so the model learns to find the number and the status, not to memorise a position.
QUESTION_TEMPLATES = (
    "Where is my order {order_id}? The site says {status}.",
    "Order {order_id} shows as {status}, can you confirm?",
    "Hi, I am checking on order number {order_id}. It is marked {status}.",
    "Can you tell me the status of order {order_id}? Tracking says {status}.",
    "My order {order_id} is {status} according to the email. Is that right?",
    "The app lists order {order_id} as {status}. What is the status?",
    "Status of order {order_id} please, the page says {status}.",
    "Hello! Order {order_id} was {status} yesterday, what does your system say?",
)

# Exactly what json.dumps writes for the answer dict: no other spacing, key order or extra keys pass.
_ANSWER_RE = re.compile(r'\{"order_id": (0|[1-9][0-9]{0,5}), "status": "(' + "|".join(STATUSES) + r')"\}')
_ORDER_ID_RE = re.compile(r"\border(?: number)? (\d{1,6})\b", re.IGNORECASE)
_STATUS_RE = re.compile(r"\b(" + "|".join(STATUSES) + r")\b")


def reference_answer(order_id: int, status: str) -> str:
    """The one accepted answer text for an order id and status."""
    return json.dumps({"order_id": order_id, "status": status})


def make_examples(n: int, seed: int) -> list[dict[str, Any]]:
    """`n` chat examples (system, user question, reference assistant answer), reproducible for a seed."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        order_id = rng.randint(1000, 9999)  # always 4 digits: a fixed answer shape
        status = rng.choice(STATUSES)
        question = rng.choice(QUESTION_TEMPLATES).format(order_id=order_id, status=status)
        examples.append(
            {
                "messages": [
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": reference_answer(order_id, status)},
                ]
            }
        )
    return examples


def format_ok(text: str) -> bool:
    """True when `text` (surrounding whitespace aside) is exactly the strict JSON answer form."""
    return _ANSWER_RE.fullmatch(text.strip()) is not None


def expected_fields(question: str) -> tuple[int, str] | None:
    """The order id and status a question asks about, or None when it names neither clearly."""
    order = _ORDER_ID_RE.search(question)
    statuses = set(_STATUS_RE.findall(question))
    if order is None or len(statuses) != 1:
        return None
    return int(order.group(1)), statuses.pop()


def _question_of(messages_or_question: str | Sequence[dict[str, Any]]) -> str:
    if isinstance(messages_or_question, str):
        return messages_or_question
    users = [m["content"] for m in messages_or_question if m.get("role") == "user"]
    if not users:
        raise ValueError("messages hold no user turn to check the answer against")
    return users[-1]


def is_correct(messages_or_question: str | Sequence[dict[str, Any]], answer_text: str) -> bool:
    """True when the answer is in the strict format and copies the question's order id and status."""
    match = _ANSWER_RE.fullmatch(answer_text.strip())
    expected = expected_fields(_question_of(messages_or_question))
    if match is None or expected is None:
        return False
    return (int(match.group(1)), match.group(2)) == expected


def task_vocabulary() -> list[str]:
    """Text the demo tokenizer should see while training, so task words become single tokens."""
    lines = [SYSTEM_PROMPT]
    for status in STATUSES:
        lines += [template.format(order_id=1234, status=status) for template in QUESTION_TEMPLATES]
        lines.append(reference_answer(1234, status))
    return lines
