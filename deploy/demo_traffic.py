"""Simulated users for the demo and the end-to-end tests: ask through the gateway, rate what comes back.

Each user asks the demo task's questions with the official `openai` client and rates the answer the way a
careful person would: thumbs-up when it is right, thumbs-down with the right answer as a correction when it
is not. A `corrector` can be swapped in to feed the loop poisoned corrections.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai

from trainer.demo_task import format_ok, is_correct

Corrector = Callable[[list[dict[str, Any]]], str]


def honest_correction(messages: list[dict[str, Any]]) -> str:
    """The reference answer (the last assistant turn of a demo example)."""
    return messages[-1]["content"]


@dataclass
class VersionTally:
    requests: int = 0
    errors: int = 0
    correct: int = 0
    format_ok: int = 0
    thumbs_up: int = 0
    thumbs_down: int = 0

    @property
    def thumbs_up_rate(self) -> float:
        rated = self.thumbs_up + self.thumbs_down
        return self.thumbs_up / rated if rated else 0.0


@dataclass
class TrafficSummary:
    by_version: dict[str, VersionTally] = field(default_factory=lambda: defaultdict(VersionTally))

    def total(self) -> int:
        return sum(t.requests for t in self.by_version.values())


async def simulate_users(
    gateway_url: str,
    api_key: str,
    alias: str,
    examples: list[dict[str, Any]],
    *,
    n_users: int = 20,
    concurrency: int = 8,
    rate: bool = True,
    corrector: Corrector = honest_correction,
    max_tokens: int = 40,
    on_answer: Callable[[], None] | None = None,
) -> TrafficSummary:
    """Send each example's question (system + user turns) as one user; rate the answer unless `rate` is off."""
    summary = TrafficSummary()
    client = openai.AsyncOpenAI(base_url=gateway_url + "/v1", api_key=api_key, max_retries=2, timeout=120)
    feedback = httpx.AsyncClient(base_url=gateway_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=60)
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int, example: dict[str, Any]) -> None:
        user = f"user-{index % n_users}"
        prompt = [m for m in example["messages"] if m["role"] != "assistant"]
        async with gate:
            try:
                raw = await client.chat.completions.with_raw_response.create(
                    model=alias, messages=prompt, max_tokens=max_tokens, temperature=0, user=user
                )
            except openai.APIError:
                summary.by_version["(error)"].errors += 1
                return
            completion = raw.parse()
            version = raw.headers.get("x-tuneloop-version", "?")
            answer = completion.choices[0].message.content or ""
            tally = summary.by_version[version]
            tally.requests += 1
            tally.format_ok += format_ok(answer)
            right = is_correct(example["messages"], answer)
            tally.correct += right
            if rate:
                body: dict[str, Any] = {"response_id": completion.id, "user": user}
                if right:
                    body["rating"] = "up"
                    tally.thumbs_up += 1
                else:
                    body.update(rating="down", correction=corrector(example["messages"]))
                    tally.thumbs_down += 1
                (await feedback.post("/v1/feedback", json=body)).raise_for_status()
            if on_answer:
                on_answer()

    try:
        await asyncio.gather(*(one(i, ex) for i, ex in enumerate(examples)))
    finally:
        await client.close()
        await feedback.aclose()
    return summary
