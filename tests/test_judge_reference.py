"""The offline reference judge, verdict parsing, and choosing a judge from the environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.settings import JudgeSettings, Settings, SettingsError, load_settings
from registry.judge_factory import build_judge
from registry.judges import AnthropicJudge, OpenAIJudge
from registry.reference_judge import ReferenceJudge, json_shape_checker, similarity
from registry.rubric import VerdictParseError, parse_pairwise, parse_score, render_question
from trainer import demo_task
from tuneloop.compose import judge as configured_judge


async def test_scores_follow_closeness_to_the_reference() -> None:
    judge = ReferenceJudge()
    reference = "Use CREATE INDEX CONCURRENTLY; it cannot run inside a transaction block."
    exact = await judge.score("q", reference, reference)
    close = await judge.score("q", reference, "Use CREATE INDEX CONCURRENTLY, which cannot run inside a transaction.")
    unrelated = await judge.score("q", reference, "The capital of France is Paris.")
    empty = await judge.score("q", reference, "")
    assert exact.score == 5
    assert 3 <= close.score <= 5
    assert unrelated.score <= 2 and empty.score == 1
    assert exact.score >= close.score >= unrelated.score
    assert judge.usage.calls == 4 and exact.usage.input_tokens == 0


async def test_short_facts_inside_short_sentences_count() -> None:
    judge = ReferenceJudge()
    assert (await judge.score("What is 7 + 5?", "12", "The answer is 12.")).score == 5
    assert (await judge.score("What is 7 + 5?", "12", "The answer is 13.")).score <= 3
    assert (await judge.score("Capital?", "Paris", "paris")).score == 5


async def test_json_references_require_json_answers_of_the_same_shape() -> None:
    judge = ReferenceJudge()
    reference = '{"order_id": 4821, "status": "shipped"}'
    assert (await judge.score("q", reference, '{"order_id": 4821, "status": "shipped"}')).score == 5
    prose = await judge.score("q", reference, "order 4821 is shipped")
    assert prose.score == 1 and "not valid JSON" in prose.reason
    wrong_keys = await judge.score("q", reference, '{"id": 4821, "status": "shipped"}')
    assert wrong_keys.score == 1 and "keys" in wrong_keys.reason
    assert json_shape_checker("plain text", "anything") is None
    assert json_shape_checker("[1, 2]", '{"a": 1}') == "expected a JSON list, got dict"


async def test_a_custom_format_checker_from_the_demo_task() -> None:
    def strict(_reference: str, answer: str) -> str | None:
        return None if demo_task.format_ok(answer) else "not the strict order JSON"

    judge = ReferenceJudge(format_checker=strict)
    reference = demo_task.reference_answer(4821, "shipped")
    assert (await judge.score("q", reference, reference)).score == 5
    loose = await judge.score("q", reference, '{"order_id":4821,"status":"shipped"}')  # spacing differs
    assert loose.score == 1 and loose.reason == "format: not the strict order JSON"


async def test_pairwise_is_deterministic_and_order_consistent() -> None:
    judge = ReferenceJudge()
    good, bad = "Paris is the capital of France.", "Berlin."
    first = await judge.compare("Capital of France?", "Paris", good, bad)
    second = await judge.compare("Capital of France?", "Paris", bad, good)
    assert (first.winner, second.winner) == ("A", "B")
    assert (await judge.compare("q", "Paris", good, good)).winner == "tie"
    assert similarity("Paris", good) == similarity("Paris", good)


@pytest.mark.parametrize(
    ("text", "score", "reason"),
    [
        ('{"score": 4, "reason": "ok"}', 4, "ok"),
        ('```json\n{"score": 2, "reason": "meh"}\n```', 2, "meh"),
        ('Here you go: {"score": 5.0, "reason": "fine"} -- done', 5, "fine"),
        ('{"score": "3", "reason": "partly"}', 3, "partly"),
        ('{"score": 4, "reason": "cut off', 4, ""),  # truncated by max_tokens
    ],
)
def test_parse_score_variants(text: str, score: int, reason: str) -> None:
    verdict = parse_score(text)
    assert (verdict.score, verdict.reason) == (score, reason)


@pytest.mark.parametrize("text", ["no json here", '{"score": 7}', '{"score": 3.5}', '{"verdict": "good"}', ""])
def test_parse_score_rejects_garbage(text: str) -> None:
    with pytest.raises(VerdictParseError):
        parse_score(text)


def test_parse_pairwise() -> None:
    assert parse_pairwise('{"winner": "a", "reason": "x"}').winner == "A"
    assert parse_pairwise('```\n{"winner": "tie", "reason": "same"}\n```').winner == "tie"
    assert parse_pairwise('{"winner":\n\n "b"\r \t,\t"').winner == "B"  # cut off by max_tokens
    with pytest.raises(VerdictParseError):
        parse_pairwise('{"winner": "C"}')


def test_render_question() -> None:
    assert render_question([{"role": "user", "content": "hi"}]) == "hi"
    rendered = render_question([{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"}])
    assert rendered == "[system] Be terse.\n[user] hi"


def _settings(monkeypatch: pytest.MonkeyPatch, home: Path, **environ: str) -> Settings:
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "TUNELOOP_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    for name in [n for n in os.environ if n.startswith("TUNELOOP_JUDGE")]:
        monkeypatch.delenv(name)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    return load_settings(home=home)


def test_judge_choice_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(configured_judge(_settings(monkeypatch, tmp_path)), ReferenceJudge)
    claude = configured_judge(_settings(monkeypatch, tmp_path, ANTHROPIC_API_KEY="sk-test"))
    assert isinstance(claude, AnthropicJudge) and claude.model == "claude-sonnet-4-6"
    assert claude.cache.path == tmp_path / "judge-cache.jsonl"
    local = configured_judge(_settings(
        monkeypatch, tmp_path, TUNELOOP_JUDGE__KIND="openai", TUNELOOP_JUDGE__BASE_URL="http://127.0.0.1:9",
        TUNELOOP_JUDGE__MODEL="big", ANTHROPIC_API_KEY="sk-anthropic-secret"))
    assert isinstance(local, OpenAIJudge) and local.name == "openai:big"
    assert local.client.api_key != "sk-anthropic-secret"  # Anthropic's key never goes to another endpoint
    forced = build_judge(JudgeSettings(kind="reference", api_key="sk-test"))
    assert isinstance(forced, ReferenceJudge)
    secret = _settings(monkeypatch, tmp_path, TUNELOOP_JUDGE__API_KEY="sk-hidden")
    assert "sk-hidden" not in repr(secret) and "sk-hidden" not in secret.model_dump_json()


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"TUNELOOP_JUDGE__KIND": "oracle"}, "TUNELOOP_JUDGE__KIND"),
        ({"TUNELOOP_JUDGE__KIND": "openai"}, "TUNELOOP_JUDGE__BASE_URL"),
        ({"TUNELOOP_JUDGE__KIND": "anthropic"}, "ANTHROPIC_API_KEY"),
        ({"TUNELOOP_JUDGE__CONCURRENCY": "0"}, "TUNELOOP_JUDGE__CONCURRENCY"),
        ({"TUNELOOP_JUDGE__CONCURRENCY": "many"}, "TUNELOOP_JUDGE__CONCURRENCY"),
    ],
)
def test_bad_judge_settings_name_the_variable(environ: dict[str, str], named: str, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SettingsError, match=named):
        _settings(monkeypatch, tmp_path, **environ)


async def test_json_answers_are_judged_field_by_field() -> None:
    judge = ReferenceJudge()
    reference = demo_task.reference_answer(4821, "shipped")
    right = await judge.score("q", reference, '{"order_id": 4821, "status": "shipped"}')
    wrong_number = await judge.score("q", reference, '{"order_id": 4812, "status": "shipped"}')
    both_wrong = await judge.score("q", reference, '{"order_id": 4812, "status": "pending"}')
    assert (right.score, wrong_number.score) == (5, 3) and both_wrong.score <= 2
    assert (await judge.compare("q", reference, reference, '{"order_id": 1, "status": "shipped"}')).winner == "A"
    assert (await judge.score("q", '{"ok": true}', '{"ok": 1}')).score == 1  # a number is not a boolean
