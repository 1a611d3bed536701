"""Judges behind one interface: Claude (anthropic SDK), any OpenAI-compatible endpoint, and an offline judge.

The LLM judges share one rubric (registry/rubric.py), parse JSON robustly, retry 429/5xx/timeouts/unparseable replies
with exponential backoff (tenacity; the SDKs' own retries are off so attempts are counted in one place),
bound their concurrency with a semaphore, count token usage, and cache verdicts in a JSON-lines file keyed
by (question, reference, answer, rubric, judge model): re-judging unchanged answers costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import anthropic
import openai
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from core.settings import DEFAULT_CLAUDE_MODEL
from registry.reports import JudgeUsage
from registry.rubric import (
    PAIRWISE_PROMPT,
    SCORE_PROMPT,
    PairwiseVerdict,
    ScoreVerdict,
    VerdictParseError,
    Winner,
    pairwise_prompt,
    parse_pairwise,
    parse_score,
    score_prompt,
)

log = logging.getLogger("tuneloop.judges")
V = TypeVar("V", ScoreVerdict, PairwiseVerdict)


class JudgeError(RuntimeError):
    """The judge gave no usable verdict after its retries (or refused the request outright)."""

    def __init__(self, message: str, usage: JudgeUsage | None = None) -> None:
        super().__init__(message)
        self.usage = usage or JudgeUsage()  # what the failed attempts cost


@dataclass(frozen=True)
class JudgeResult:
    score: int
    reason: str
    usage: JudgeUsage = field(default_factory=JudgeUsage)
    cached: bool = False


@dataclass(frozen=True)
class CompareResult:
    winner: Winner  # "A", "B" or "tie"
    reason: str
    usage: JudgeUsage = field(default_factory=JudgeUsage)
    cached: bool = False


class Judge(Protocol):
    name: str
    usage: JudgeUsage  # running total over the judge's lifetime

    async def score(self, question: str, reference: str, answer: str) -> JudgeResult: ...

    async def compare(self, question: str, reference: str, answer_a: str, answer_b: str) -> CompareResult: ...


class JudgeCache:
    """Verdicts in a JSON-lines file (append-only; a torn last line from a crash is skipped on load)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._entries: dict[str, dict[str, Any]] = {}
        if path is not None and path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                    self._entries[record["key"]] = record["value"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue

    @staticmethod
    def key(*parts: str) -> str:
        return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()

    def get(self, key: str) -> dict[str, Any] | None:
        return self._entries.get(key)

    def put(self, key: str, value: dict[str, Any]) -> None:
        self._entries[key] = value
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"key": key, "value": value}, ensure_ascii=False) + "\n")

    def __len__(self) -> int:
        return len(self._entries)


def _status_code(exc: BaseException) -> int | None:
    return getattr(exc, "status_code", None)


def is_retryable(exc: BaseException) -> bool:
    """Rate limits, server errors, timeouts and lost connections pass; so does a reply with no verdict."""
    if isinstance(exc, VerdictParseError | anthropic.APIConnectionError | openai.APIConnectionError):
        return True  # APITimeoutError is an APIConnectionError in both SDKs
    status = _status_code(exc)
    return status is not None and (status in (408, 409, 429) or status >= 500)


class _LLMJudge:
    """Rubric, cache, retries, concurrency and usage; subclasses only send one prompt and return the text."""

    kind = "llm"

    def __init__(self, model: str, *, concurrency: int = 4, max_attempts: int = 5, backoff_initial_s: float = 1.0,
                 backoff_max_s: float = 30.0, max_tokens: int = 256, cache: JudgeCache | None = None) -> None:
        if not model:
            raise ValueError("model: the judge needs a model name")
        if concurrency < 1:
            raise ValueError(f"concurrency: {concurrency} must be at least 1")
        if max_attempts < 1:
            raise ValueError(f"max_attempts: {max_attempts} must be at least 1")
        self.model = model
        self.name = f"{self.kind}:{model}"
        self.max_attempts, self.max_tokens = max_attempts, max_tokens
        self.backoff_initial_s, self.backoff_max_s = backoff_initial_s, backoff_max_s
        self.cache = cache if cache is not None else JudgeCache()
        self.usage = JudgeUsage()
        self._semaphore = asyncio.Semaphore(concurrency)

    async def _complete(self, prompt: str, schema: dict[str, Any]) -> tuple[str, int, int]:
        """Send the prompt; (reply text, input tokens, output tokens)."""
        raise NotImplementedError

    async def score(self, question: str, reference: str, answer: str) -> JudgeResult:
        key = JudgeCache.key("score", question, reference, answer, SCORE_PROMPT, self.name)
        if (hit := self._cached(key)) is not None:
            return JudgeResult(hit["score"], hit["reason"], JudgeUsage(cache_hits=1), cached=True)
        verdict, usage = await self._ask(score_prompt(question, reference, answer), parse_score, SCORE_SCHEMA)
        self.cache.put(key, {"score": verdict.score, "reason": verdict.reason})
        return JudgeResult(verdict.score, verdict.reason, usage)

    async def compare(self, question: str, reference: str, answer_a: str, answer_b: str) -> CompareResult:
        key = JudgeCache.key("compare", question, reference, answer_a, answer_b, PAIRWISE_PROMPT, self.name)
        if (hit := self._cached(key)) is not None:
            return CompareResult(hit["winner"], hit["reason"], JudgeUsage(cache_hits=1), cached=True)
        prompt = pairwise_prompt(question, reference, answer_a, answer_b)
        verdict, usage = await self._ask(prompt, parse_pairwise, PAIRWISE_SCHEMA)
        self.cache.put(key, {"winner": verdict.winner, "reason": verdict.reason})
        return CompareResult(verdict.winner, verdict.reason, usage)

    def _cached(self, key: str) -> dict[str, Any] | None:
        hit = self.cache.get(key)
        if hit is not None:
            self.usage.cache_hits += 1
        return hit

    async def _ask(self, prompt: str, parse: Callable[[str], V], schema: dict[str, Any]) -> tuple[V, JudgeUsage]:
        usage = JudgeUsage()
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_attempts), wait=self._wait,
            retry=retry_if_exception(is_retryable), reraise=True,
        )
        try:
            async with self._semaphore:  # held through backoff sleeps too: a rate-limited judge slows down
                async for attempt in retrying:
                    with attempt:
                        usage.calls += 1
                        usage.retries += int(attempt.retry_state.attempt_number > 1)
                        text, tokens_in, tokens_out = await self._complete(prompt, schema)
                        usage.input_tokens += tokens_in
                        usage.output_tokens += tokens_out
                        verdict = parse(text)
        except (VerdictParseError, anthropic.APIError, openai.APIError) as exc:
            raise JudgeError(f"{self.name}: no verdict after {usage.calls} attempt(s): {exc}", usage) from exc
        finally:
            self.usage.add(usage)
        return verdict, usage

    def _wait(self, state: RetryCallState) -> float:
        """Exponential backoff with jitter, stretched to the server's Retry-After when it sends one."""
        delay = wait_exponential_jitter(
            initial=self.backoff_initial_s, max=self.backoff_max_s, jitter=self.backoff_initial_s
        )(state)
        exc = state.outcome.exception() if state.outcome else None
        response = getattr(exc, "response", None)
        retry_after = response.headers.get("retry-after") if response is not None else None
        with contextlib.suppress(ValueError):  # an HTTP-date Retry-After is rare; backoff alone is fine then
            delay = max(delay, float(retry_after)) if retry_after else delay
        log.info("judge %s: attempt %d failed (%s); retrying in %.2fs", self.name, state.attempt_number, exc, delay)
        return min(delay, self.backoff_max_s)


# Structured-output schemas for OpenAI-compatible servers that support them (vLLM does): the score comes first
# so a reply cut off by max_tokens still carries it.
SCORE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"score": {"type": "integer", "enum": [1, 2, 3, 4, 5]},
                   "reason": {"type": "string", "maxLength": 200}},
    "required": ["score", "reason"],
}
PAIRWISE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"winner": {"type": "string", "enum": ["A", "B", "tie"]},
                   "reason": {"type": "string", "maxLength": 200}},
    "required": ["winner", "reason"],
}


class AnthropicJudge(_LLMJudge):
    """Claude through the official SDK (Messages API); `base_url` points it at a proxy or a test server."""

    kind = "anthropic"

    def __init__(self, model: str = DEFAULT_CLAUDE_MODEL, *, api_key: str, base_url: str | None = None,
                 timeout_s: float = 60.0, **options: Any) -> None:
        super().__init__(model, **options)
        if not api_key:
            raise ValueError("api_key: the Anthropic judge needs a key (ANTHROPIC_API_KEY)")
        self.client = anthropic.AsyncAnthropic(api_key=api_key, base_url=base_url, timeout=timeout_s, max_retries=0)

    async def _complete(self, prompt: str, schema: dict[str, Any]) -> tuple[str, int, int]:
        # As in the reference recipe: model, max_tokens, one user turn (this SDK takes no sampling parameters).
        message = await self.client.messages.create(
            model=self.model, max_tokens=self.max_tokens, messages=[{"role": "user", "content": prompt}],
        )
        text = "".join(getattr(block, "text", "") for block in message.content)
        return text, message.usage.input_tokens or 0, message.usage.output_tokens or 0


class OpenAIJudge(_LLMJudge):
    """Any OpenAI-compatible chat endpoint (e.g. a large local model served by vLLM), same rubric."""

    kind = "openai"

    def __init__(self, model: str, *, base_url: str, api_key: str = "EMPTY", timeout_s: float = 120.0,
                 structured_output: bool = False, **options: Any) -> None:
        super().__init__(model, **options)
        self.structured_output = structured_output
        self.client = openai.AsyncOpenAI(base_url=openai_base_url(base_url), api_key=api_key or "EMPTY",
                                         timeout=timeout_s, max_retries=0)

    async def _complete(self, prompt: str, schema: dict[str, Any]) -> tuple[str, int, int]:
        extra: dict[str, Any] = {}
        if self.structured_output:
            extra["response_format"] = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema}}
        response = await self.client.chat.completions.create(
            model=self.model, messages=[{"role": "user", "content": prompt}],
            max_tokens=self.max_tokens, temperature=0.0, **extra,
        )
        text = response.choices[0].message.content or "" if response.choices else ""
        usage = response.usage
        return text, (usage.prompt_tokens if usage else 0), (usage.completion_tokens if usage else 0)


def openai_base_url(base_url: str) -> str:
    """The SDK wants the /v1 root; tuneloop's settings store replica URLs without it."""
    base = base_url.rstrip("/")
    return base if base.endswith("/v1") else base + "/v1"
