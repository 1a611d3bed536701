"""The Claude judge: the real `anthropic` client against a local server speaking the Messages API."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from registry.judges import AnthropicJudge, JudgeCache, JudgeError, OpenAIJudge
from registry.rubric import SCORE_PROMPT
from tests.judge_servers import Reply, scripted_server

FAST = {"backoff_initial_s": 0.01, "backoff_max_s": 0.05}


def _judge(url: str, **options) -> AnthropicJudge:
    return AnthropicJudge("claude-sonnet-4-6", api_key="test-key", base_url=url, **{**FAST, **options})


async def test_good_answer_uses_the_reference_rubric_and_counts_tokens() -> None:
    with scripted_server("anthropic", [Reply('{"score": 5, "reason": "Correct and complete."}')]) as server:
        judge = _judge(server.base_url)
        result = await judge.score("What is 2+2?", "4", "2+2 equals 4.")
    assert (result.score, result.reason, result.cached) == (5, "Correct and complete.", False)
    assert server.paths == ["/v1/messages"]
    sent = server.headers[0]
    assert "test-key" in sent.get("x-api-key", "") + sent.get("authorization", "")  # header depends on SDK version
    request = server.requests[0]
    assert request["model"] == "claude-sonnet-4-6"
    prompt = request["messages"][0]["content"]
    assert prompt == SCORE_PROMPT.format(question="What is 2+2?", reference="4", response="2+2 equals 4.")
    assert "1 = Completely wrong or missing critical information" in prompt
    assert result.usage.calls == 1 and result.usage.input_tokens > 0 and result.usage.output_tokens > 0
    assert judge.usage.input_tokens == result.usage.input_tokens


async def test_fenced_and_chatty_json_are_understood() -> None:
    replies = [
        Reply('```json\n{"score": 3, "reason": "Misses the version."}\n```'),
        Reply('Sure! Here is my verdict:\n{"score": "4", "reason": "Mostly right."}\nHope this helps.'),
    ]
    with scripted_server("anthropic", replies) as server:
        judge = _judge(server.base_url)
        fenced = await judge.score("q1", "ref", "a1")
        chatty = await judge.score("q2", "ref", "a2")
    assert (fenced.score, fenced.reason) == (3, "Misses the version.")
    assert (chatty.score, chatty.reason) == (4, "Mostly right.")


async def test_garbage_is_retried_then_fails_clearly() -> None:
    with scripted_server("anthropic", [Reply("I cannot decide."), Reply('{"score": 2, "reason": "Wrong."}')]) as s:
        result = await _judge(s.base_url).score("q", "r", "a")
    assert result.score == 2 and result.usage.calls == 2 and result.usage.retries == 1

    with scripted_server("anthropic", [], default=Reply('{"score": 9, "reason": "off the scale"}')) as server:
        judge = _judge(server.base_url, max_attempts=3)
        with pytest.raises(JudgeError, match="no verdict after 3 attempt") as failure:
            await judge.score("q", "r", "a")
    assert len(server.requests) == 3
    assert failure.value.usage.calls == 3 and failure.value.usage.output_tokens > 0


async def test_rate_limit_then_success_honours_retry_after() -> None:
    replies = [Reply(status=429, headers={"retry-after": "0.3"}), Reply(status=529),
               Reply('{"score": 4, "reason": "Good."}')]
    with scripted_server("anthropic", replies) as server:
        judge = _judge(server.base_url, backoff_max_s=1.0)
        began = time.monotonic()
        result = await judge.score("q", "r", "a")
        waited = time.monotonic() - began
    assert result.score == 4
    assert result.usage.calls == 3 and result.usage.retries == 2
    assert waited >= 0.3  # the server asked for 0.3 s before the second attempt
    assert len(server.requests) == 3


async def test_client_errors_are_not_retried() -> None:
    with scripted_server("anthropic", [Reply(status=400)]) as server, pytest.raises(JudgeError, match="1 attempt"):
        await _judge(server.base_url).score("q", "r", "a")
    assert len(server.requests) == 1


async def test_timeout_then_success_and_persistent_timeout() -> None:
    replies = [Reply('{"score": 1, "reason": "late"}', delay_s=1.0), Reply('{"score": 5, "reason": "on time"}')]
    with scripted_server("anthropic", replies) as server:
        result = await _judge(server.base_url, timeout_s=0.3).score("q", "r", "a")
    assert (result.score, result.reason, result.usage.retries) == (5, "on time", 1)

    late = Reply('{"score": 1, "reason": "late"}', delay_s=1.0)
    timed_out = pytest.raises(JudgeError, match=r"2 attempt.*timed out")
    with scripted_server("anthropic", [], default=late) as server, timed_out:
        await _judge(server.base_url, timeout_s=0.2, max_attempts=2).score("q", "r", "a")
    assert len(server.requests) == 2


async def test_concurrency_is_bounded() -> None:
    with scripted_server("anthropic", [], default=Reply('{"score": 3, "reason": "ok"}', delay_s=0.2)) as server:
        judge = _judge(server.base_url, concurrency=2)
        began = time.monotonic()
        results = await asyncio.gather(*(judge.score(f"q{i}", "r", "a") for i in range(6)))
        elapsed = time.monotonic() - began
    assert [r.score for r in results] == [3] * 6
    assert elapsed >= 0.55  # 6 requests of 0.2 s, two at a time: three rounds


async def test_cache_is_keyed_by_every_input_and_survives_restarts(tmp_path: Path) -> None:
    cache_file = tmp_path / "judge-cache.jsonl"
    with scripted_server("anthropic", [], default=Reply('{"score": 4, "reason": "fine"}')) as server:
        judge = _judge(server.base_url, cache=JudgeCache(cache_file))
        await judge.score("q", "ref", "answer")
        again = await judge.score("q", "ref", "answer")
        assert again.cached and again.usage.calls == 0 and len(server.requests) == 1
        for variant in (("q2", "ref", "answer"), ("q", "ref2", "answer"), ("q", "ref", "answer2")):
            await judge.score(*variant)
        assert len(server.requests) == 4
        other_model = AnthropicJudge("claude-other", api_key="k", base_url=server.base_url,
                                     cache=JudgeCache(cache_file), **FAST)
        await other_model.score("q", "ref", "answer")
        assert len(server.requests) == 5
        with cache_file.open("a") as handle:
            handle.write('{"key": "torn')  # a crash in the middle of an append
        restarted = _judge(server.base_url, cache=JudgeCache(cache_file))
        hit = await restarted.score("q", "ref", "answer")
    assert hit.cached and hit.score == 4 and restarted.usage.cache_hits == 1
    assert len(server.requests) == 5
    assert all(json.loads(line) for line in cache_file.read_text().splitlines()[:-1])


async def test_pairwise_verdicts_and_openai_compatible_judge() -> None:
    with scripted_server("anthropic", [Reply('{"winner": "B", "reason": "B is right."}')]) as server:
        verdict = await _judge(server.base_url).compare("q", "ref", "a", "b")
    assert (verdict.winner, verdict.reason) == ("B", "B is right.")
    assert "Response A: a\nResponse B: b" in server.requests[0]["messages"][0]["content"]

    replies = [Reply(status=503), Reply('Verdict: {"score": 2, "reason": "Partly wrong."}')]
    with scripted_server("openai", replies) as server:
        judge = OpenAIJudge("big-local", base_url=server.base_url, structured_output=True, **FAST)
        result = await judge.score("q", "ref", "a")
    assert (result.score, result.usage.retries) == (2, 1)
    assert server.paths[-1] == "/v1/chat/completions"
    assert server.requests[-1]["response_format"]["type"] == "json_schema"
    assert result.usage.input_tokens > 0
