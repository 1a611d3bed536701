"""Evaluate any OpenAI-compatible endpoint on a set of chat examples, and compare two endpoints pairwise.

An example is a chat `messages` list whose last assistant turn is the reference answer (the logged or the
corrected answer for the dataset's eval split; ours for the regression set shipped in registry/data).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai

from core.chat_format import check_messages
from core.clock import utcnow
from registry.judges import Judge, JudgeError, openai_base_url
from registry.reports import EvalReport, ExampleResult, JudgeUsage, PairResult, PairwiseReport
from registry.rubric import render_question

REGRESSION_SET = Path(__file__).parent / "data" / "regression.jsonl"


@dataclass(frozen=True)
class EvalExample:
    id: str
    messages: list[dict[str, Any]]  # the prompt: everything before the reference answer
    reference: str

    @property
    def question(self) -> str:
        return render_question(self.messages)


def example_from_record(record: dict[str, Any], fallback_id: str) -> EvalExample:
    """{"messages": [..., {"role": "assistant", "content": reference}], "id": optional}: a conversation of the
    chat-dataset format (core.chat_format) whose last turn is the reference answer."""
    messages, reason = check_messages(record.get("messages"))
    if messages is None:
        raise ValueError(f"example {fallback_id}: {reason}")
    return EvalExample(id=str(record.get("id") or fallback_id), messages=messages[:-1],
                       reference=messages[-1]["content"])


def load_examples(path: str | Path, limit: int | None = None) -> list[EvalExample]:
    """Examples from a JSON-lines file of {"messages": [...]} records."""
    examples: list[EvalExample] = []
    with Path(path).open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{line_number}: not JSON ({exc.msg})") from None
            examples.append(example_from_record(record, f"{Path(path).stem}-{line_number}"))
            if limit is not None and len(examples) >= limit:
                break
    return examples


def examples_from_records(records: Iterable[dict[str, Any]]) -> list[EvalExample]:
    return [example_from_record(record, f"example-{i}") for i, record in enumerate(records, start=1)]


def regression_examples(limit: int | None = None) -> list[EvalExample]:
    """The general regression set shipped with tuneloop (forgetting check)."""
    return load_examples(REGRESSION_SET, limit)


async def evaluate_endpoint(
    base_url: str,
    model: str,
    examples: list[EvalExample],
    judge: Judge,
    concurrency: int = 8,
    *,
    name: str = "eval",
    api_key: str = "EMPTY",
    max_tokens: int = 256,
    temperature: float = 0.0,
    timeout_s: float = 120.0,
) -> EvalReport:
    """Ask `model` at `base_url` every example (at most `concurrency` at once), then judge each answer.

    An example the endpoint fails to answer scores the minimum (it would have failed a user too); one the
    judge cannot score is left unscored and counted as failed, so the gate can refuse a thin report.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency: {concurrency} must be at least 1")
    client = openai.AsyncOpenAI(base_url=openai_base_url(base_url), api_key=api_key or "EMPTY",
                                timeout=timeout_s, max_retries=2)
    semaphore = asyncio.Semaphore(concurrency)
    started, clock = utcnow(), time.monotonic()
    usage = JudgeUsage()  # this report's share (the judge may be shared with concurrent evaluations)

    async def run(example: EvalExample) -> ExampleResult:
        result = ExampleResult(id=example.id, question=example.question, reference=example.reference)
        async with semaphore:
            began = time.monotonic()
            try:
                response = await client.chat.completions.create(
                    model=model, messages=example.messages,  # type: ignore[arg-type]
                    max_tokens=max_tokens, temperature=temperature,
                )
                result.answer = (response.choices[0].message.content or "") if response.choices else ""
                if response.usage:
                    result.prompt_tokens = response.usage.prompt_tokens or 0
                    result.completion_tokens = response.usage.completion_tokens or 0
            except openai.OpenAIError as exc:
                result.error = f"{type(exc).__name__}: {exc}"
            result.latency_ms = (time.monotonic() - began) * 1000
        if result.error is not None:
            result.score, result.reason = 1, "no answer from the endpoint"
            return result
        try:
            verdict = await judge.score(example.question, example.reference, result.answer or "")
            result.score, result.reason = verdict.score, verdict.reason
            usage.add(verdict.usage)
        except JudgeError as exc:
            result.judge_error = str(exc)
            usage.add(exc.usage)
        return result

    try:
        results = await asyncio.gather(*(run(example) for example in examples))
    finally:
        await client.close()
    return EvalReport(
        name=name, model=model, base_url=base_url, judge=judge.name, examples=list(results),
        prompt_tokens=sum(r.prompt_tokens for r in results),
        completion_tokens=sum(r.completion_tokens for r in results),
        judge_usage=usage, started_at=started, wall_s=time.monotonic() - clock,
    )


async def compare_reports(candidate: EvalReport, production: EvalReport, judge: Judge,
                          concurrency: int = 8) -> PairwiseReport:
    """Pairwise verdicts on the examples both reports share, each judged in both orders.

    With the candidate as A then as B, a verdict that follows the position rather than the answer
    (A both times) cancels out to a tie.
    """
    production_by_id = {e.id: e for e in production.examples}
    semaphore = asyncio.Semaphore(concurrency)
    report = PairwiseReport(judge=judge.name)

    async def run(cand: ExampleResult, prod: ExampleResult) -> PairResult:
        pair = PairResult(id=cand.id)
        if cand.error or prod.error:  # a missing answer loses to any answer
            pair.outcome = "tie" if cand.error and prod.error else ("loss" if cand.error else "win")
            pair.reasons.append("no answer from " + ("both" if pair.outcome == "tie" else
                                                     "the candidate" if cand.error else "production"))
            return pair
        async with semaphore:
            try:
                first, second = await asyncio.gather(
                    judge.compare(cand.question, cand.reference, cand.answer or "", prod.answer or ""),
                    judge.compare(cand.question, cand.reference, prod.answer or "", cand.answer or ""),
                )
            except JudgeError as exc:
                pair.judge_error = str(exc)
                report.judge_usage.add(exc.usage)
                return pair
        for verdict in (first, second):
            report.judge_usage.add(verdict.usage)
        pair.first, pair.second, pair.reasons = first.winner, second.winner, [first.reason, second.reason]
        votes = {"A": 1, "B": -1, "tie": 0}
        balance = votes[first.winner] - votes[second.winner]  # > 0: the candidate won overall
        pair.outcome = "win" if balance > 0 else "loss" if balance < 0 else "tie"
        return pair

    pairs = [(c, production_by_id[c.id]) for c in candidate.examples if c.id in production_by_id]
    report.pairs = list(await asyncio.gather(*(run(c, p) for c, p in pairs)))
    return report
