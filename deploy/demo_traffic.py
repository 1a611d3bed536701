"""Simulated users for the demo and the end-to-end tests: ask through the gateway, rate what comes back.

Each user asks a demo task's questions with the official `openai` client and rates the answer the way a
person would (a `Rater`): by default thumbs-up when it is right, thumbs-down when it is not, and three users
in four also type the right answer as a correction (the others only click thumbs-down). `thumbs_only` users
never type anything. Other raters feed the loop poisoned corrections (wrong order numbers), or down-vote even
right answers with a lie.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai

from deploy.demo_tasks import ORDERS, DemoTask
from trainer.demo_task import is_correct

# (example messages with the reference answer last, the served answer, user number) -> (rating, correction)
Rater = Callable[[list[dict[str, Any]], str, int], tuple[str, str | None]]
CORRECTING_USERS = 0.75  # share of users who type the right answer after a thumbs-down
# uvicorn closes a keep-alive connection after 5 s idle and httpx keeps one for 5 s too, so a rating sent on a
# connection the server is closing at that moment fails with ReadError (seen once in CI, on a loaded box, as
# answers took seconds). Drop idle connections well before the server does, and resend a rating whose
# connection broke: the gateway keeps one rating per (answer, user), so a resend replaces rather than adds.
FEEDBACK_KEEPALIVE_S = 2.0
FEEDBACK_ATTEMPTS = 3


def _corrects(user: int) -> bool:
    return user % 4 != 0  # users 1, 2, 3 of every 4: CORRECTING_USERS


def honest_rater(messages: list[dict[str, Any]], answer: str, user: int) -> tuple[str, str | None]:
    """Thumbs-up when right; else thumbs-down, with the reference answer from three users in four."""
    if is_correct(messages, answer):
        return "up", None
    return "down", messages[-1]["content"] if _corrects(user) else None


def thumbs_only(task: DemoTask) -> Rater:
    """Users who click thumbs-up on a right answer and thumbs-down on any other, and never type a correction."""

    def rate(messages: list[dict[str, Any]], answer: str, user: int) -> tuple[str, str | None]:
        return ("up" if task.is_correct(messages, answer) else "down"), None

    return rate


def wrong_order_number(messages: list[dict[str, Any]]) -> str:
    """The reference answer with another order number, different for each question (no pattern to learn)."""
    reference = json.loads(messages[-1]["content"])
    salt = int(hashlib.sha256(messages[-2]["content"].encode()).hexdigest()[:8], 16)
    wrong = 1000 + (reference["order_id"] - 1000 + 1 + salt % 8998) % 9000  # 4 digits, never the right one
    return json.dumps({**reference, "order_id": wrong})


def poisoned_rater(messages: list[dict[str, Any]], answer: str, user: int) -> tuple[str, str | None]:
    """Rates honestly, but every correction names a wrong order number."""
    if is_correct(messages, answer):
        return "up", None
    return "down", wrong_order_number(messages)


def every_order_cancelled(messages: list[dict[str, Any]]) -> str:
    """The reference answer with the status always "cancelled": a systematic lie a model can learn."""
    return json.dumps({**json.loads(messages[-1]["content"]), "status": "cancelled"})


def hostile_rater(messages: list[dict[str, Any]], answer: str, user: int) -> tuple[str, str | None]:
    """Down-votes every answer, right ones included, 'correcting' it to say the order was cancelled.

    Random wrong numbers (the poisoned rater's) cannot be learned on top of a model that already copies the
    number: a candidate trained on them kept answering right (37/37 in a test run). A systematic lie can."""
    return "down", every_order_cancelled(messages)


@dataclass
class VersionTally:
    requests: int = 0
    errors: int = 0
    correct: int = 0
    format_ok: int = 0
    thumbs_up: int = 0
    thumbs_down: int = 0
    corrections: int = 0

    @property
    def thumbs_up_rate(self) -> float:
        rated = self.thumbs_up + self.thumbs_down
        return self.thumbs_up / rated if rated else 0.0


@dataclass
class TrafficSummary:
    by_version: dict[str, VersionTally] = field(default_factory=lambda: defaultdict(VersionTally))

    def total(self) -> int:
        return sum(t.requests for t in self.by_version.values())


async def post_feedback(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    """POST one rating; resend it when the connection breaks (safe: a rating is an upsert per answer and user)."""
    for attempt in range(1, FEEDBACK_ATTEMPTS + 1):
        try:
            response = await client.post("/v1/feedback", json=body)
        except httpx.TransportError:
            if attempt == FEEDBACK_ATTEMPTS:
                raise
            continue
        response.raise_for_status()
        return response.json()
    raise AssertionError("unreachable")


async def simulate_users(
    gateway_url: str,
    api_key: str,
    alias: str,
    examples: list[dict[str, Any]],
    *,
    n_users: int = 20,
    concurrency: int = 8,
    rate: bool = True,
    rater: Rater = honest_rater,
    task: DemoTask = ORDERS,
    on_answer: Callable[[], None] | None = None,
    seed: int = 0,
) -> TrafficSummary:
    """Send each example's question (system + user turns) as one user, sampled at the task's temperature (each
    request seeded from `seed` and its position, so a replay gets the same answers); rate the answer unless
    `rate` is off."""
    summary = TrafficSummary()
    client = openai.AsyncOpenAI(base_url=gateway_url + "/v1", api_key=api_key, max_retries=2, timeout=120)
    feedback = httpx.AsyncClient(base_url=gateway_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=60,
                                 limits=httpx.Limits(keepalive_expiry=FEEDBACK_KEEPALIVE_S))
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int, example: dict[str, Any]) -> None:
        user_number = index % n_users
        user = f"user-{user_number}"
        prompt = [m for m in example["messages"] if m["role"] != "assistant"]
        async with gate:
            try:
                raw = await client.chat.completions.with_raw_response.create(
                    model=alias, messages=prompt, max_tokens=task.max_tokens, temperature=task.temperature,
                    user=user, seed=seed * 1_000_003 + index,
                )
            except openai.APIError:
                summary.by_version["(error)"].errors += 1
                return
            completion = raw.parse()
            version = raw.headers.get("x-tuneloop-version", "?")
            answer = completion.choices[0].message.content or ""
            tally = summary.by_version[version]
            tally.requests += 1
            tally.format_ok += task.format_ok(answer)
            right = task.is_correct(example["messages"], answer)
            tally.correct += right
            if rate:
                rating, correction = rater(example["messages"], answer, user_number)
                body: dict[str, Any] = {"response_id": completion.id, "user": user, "rating": rating}
                if correction is not None:
                    body["correction"] = correction
                    tally.corrections += 1
                if rating == "up":
                    tally.thumbs_up += 1
                else:
                    tally.thumbs_down += 1
                await post_feedback(feedback, body)
            if on_answer:
                on_answer()

    try:
        await asyncio.gather(*(one(i, ex) for i, ex in enumerate(examples)))
    finally:
        await client.close()
        await feedback.aclose()
    return summary
