"""The gate is a pure function of reports and policy: crafted reports, every check, every reason."""

from __future__ import annotations

import pytest

from core.policies import GatePolicy
from registry.gate import decide
from registry.reports import EvalReport, ExampleResult, PairResult, PairwiseReport, score_to_points


def report(scores: list[int | None], name: str = "eval", failed: int = 0) -> EvalReport:
    examples = [ExampleResult(id=f"e{i}", question="q", reference="r", answer="a", score=s)
                for i, s in enumerate(scores)]
    examples += [ExampleResult(id=f"f{i}", question="q", reference="r", error="boom", score=1)
                 for i in range(failed)]
    return EvalReport(name=name, model="m", base_url="http://x", judge="test", examples=examples)


def pairwise(wins: int, ties: int, losses: int) -> PairwiseReport:
    outcomes = ["win"] * wins + ["tie"] * ties + ["loss"] * losses
    return PairwiseReport(judge="test", pairs=[PairResult(id=str(i), outcome=o) for i, o in enumerate(outcomes)])


def good_inputs() -> dict:
    return {
        "candidate_report": report([5, 4, 4, 5]),  # 4.5
        "production_report": report([3, 4, 3, 4]),  # 3.5
        "pairwise": pairwise(3, 1, 0),
        "regression_candidate": report([4, 4, 5, 5], "regression"),  # 4.5 -> 87.5 points
        "regression_base": report([4, 5, 5, 4], "regression"),
    }


def test_points_scale() -> None:
    assert (score_to_points(1), score_to_points(3), score_to_points(5)) == (0.0, 50.0, 100.0)
    assert score_to_points(4.8) - score_to_points(5.0) == pytest.approx(-5.0)


def test_a_good_candidate_passes_with_every_reason_recorded() -> None:
    decision = decide(**good_inputs())
    assert decision.passed
    assert all(reason.startswith("ok: ") for reason in decision.reasons)
    assert any("mean score 4.50 vs minimum 4.00" in r for r in decision.reasons)
    assert decision.figures["delta_vs_production"] == pytest.approx(1.0)
    assert decision.figures["pairwise"]["win_rate"] == pytest.approx(3.5 / 4)
    assert decision.figures["regression_drop_points"] == pytest.approx(0.0)
    assert decision.to_dict()["policy"]["min_mean_score"] == 4.0


@pytest.mark.parametrize(
    ("change", "expected_reason"),
    [
        ({"candidate_report": report([4, 4, 3, 4])}, "mean score 3.75 vs minimum 4.00"),
        ({"production_report": report([5, 5, 5, 5])}, "vs production 5.00"),
        ({"pairwise": pairwise(0, 2, 2)}, "pairwise win rate 0.25"),
        ({"regression_candidate": report([4, 4, 4, 5], "regression")}, "drop 6.2"),  # 4.25 vs 4.5: 6.25 points
        ({"candidate_report": report([5, 5, 5, 5], failed=1)}, "candidate eval: 1/5 failed"),
        ({"candidate_report": None}, "candidate not evaluated"),
        ({"production_report": None}, "production not evaluated"),
        ({"pairwise": None}, "no pairwise comparison"),
        ({"regression_base": None}, "regression set not evaluated"),
        ({"candidate_report": report([None, None])}, "candidate not evaluated"),
    ],
)
def test_each_failed_check_fails_the_gate_and_says_why(change: dict, expected_reason: str) -> None:
    decision = decide(**{**good_inputs(), **change})
    assert not decision.passed
    failures = [r for r in decision.reasons if r.startswith("FAIL: ")]
    assert any(expected_reason in r for r in failures), decision.reasons


def test_boundaries_are_inclusive() -> None:
    exactly = {
        "candidate_report": report([4, 4, 4, 4]),
        "production_report": report([4, 4, 4, 5]),  # 4.25: a drop of 0.25
        "pairwise": pairwise(1, 0, 1),
        "regression_candidate": report([4, 4, 4, 4, 4], "regression"),
        "regression_base": report([4, 4, 4, 4, 5], "regression"),  # 4.2 -> exactly 5 points more
    }
    strict = GatePolicy(max_drop_vs_production=0.25)
    assert decide(**exactly, policy=strict).passed
    assert not decide(**exactly, policy=GatePolicy(max_drop_vs_production=0.2)).passed


def test_checks_can_be_turned_off() -> None:
    policy = GatePolicy(max_drop_vs_production=None, min_pairwise_win_rate=None, max_regression_drop_points=None)
    decision = decide(report([4, 5]), None, None, None, None, policy)
    assert decision.passed and len(decision.reasons) == 3  # examples, mean, failure share


@pytest.mark.parametrize(
    ("field", "value"),
    [("min_mean_score", 6.0), ("max_drop_vs_production", -1.0), ("min_pairwise_win_rate", 1.5),
     ("max_regression_drop_points", 101.0), ("max_failure_rate", 2.0), ("min_examples", 0)],
)
def test_bad_policy_names_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        GatePolicy(**{field: value})


def test_the_golden_set_is_judged_on_its_own() -> None:
    # A poisoned eval split can carry the overall mean; the trusted golden set still fails the candidate.
    inputs = good_inputs()
    control = decide(**inputs, golden=report([5, 5, 4, 5], "golden"))
    rejected = decide(**inputs, golden=report([3, 3, 3, 4], "golden"))
    assert control.passed and control.figures["golden_mean"] == pytest.approx(4.75)
    assert not rejected.passed
    assert "FAIL: golden set: mean score 3.25 over 4 trusted examples vs minimum 4.00" in rejected.reasons
    assert decide(**inputs, golden=report([3, 3], "golden"), policy=GatePolicy(min_golden_score=None)).passed


def test_eval_report_subset_keeps_only_the_named_examples() -> None:
    full = report([5, 3, 1])
    golden = full.subset({"e0", "e2"}, name="golden")
    assert golden.name == "golden" and [e.id for e in golden.examples] == ["e0", "e2"]
    assert golden.mean_score == pytest.approx(3.0) and full.n == 3
