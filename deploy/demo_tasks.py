"""The demo's tasks: what simulated users ask, how an answer is checked, and how the app samples answers.

orders     copy an order number and status into strict JSON (trainer/demo_task.py): the base model never
           gets it right, so the day needs users who type corrections; answers are greedy.
sentiment  label a customer's message with one word (trainer/sentiment_task.py): the base model is right on
           part of the questions, and thumbs alone carry the signal; the app samples (temperature > 0), as chat
           apps do, so one question gets different answers and the thumbs tell them apart.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from trainer import demo_task, sentiment_task

Messages = Sequence[dict[str, Any]]


@dataclass(frozen=True)
class DemoTask:
    name: str
    make_examples: Callable[[int, int], list[dict[str, Any]]]  # (n, seed) -> chat examples, reference last
    is_correct: Callable[[Messages, str], bool]
    format_ok: Callable[[str], bool]
    temperature: float  # the app's sampling temperature for users' questions
    max_tokens: int = 40


ORDERS = DemoTask("orders", demo_task.make_examples, demo_task.is_correct, demo_task.format_ok, temperature=0.0)
SENTIMENT = DemoTask("sentiment", sentiment_task.make_examples, sentiment_task.is_correct, sentiment_task.format_ok,
                     temperature=sentiment_task.APP_TEMPERATURE)
TASKS = {task.name: task for task in (ORDERS, SENTIMENT)}
