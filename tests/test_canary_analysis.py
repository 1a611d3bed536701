"""Canary analysis on synthetic figures: promote, rollback, wait (too few samples, not yet significant, no
canary traffic at all), and policy validation that names the bad field."""

from __future__ import annotations

import pytest

from core.policies import CanaryPolicy
from deploy.analysis import NO_CANARY_TRAFFIC, Action, ArmFigures, Verdict, analyse, format_duration

POLICY = CanaryPolicy(min_requests=200, min_ratings=30, max_error_rate_increase=0.01,
                      max_thumbs_down_rate_increase=0.05, alpha=0.05, max_p95_latency_ratio=1.5)


def arm(version: str, requests: int = 1000, errors: int = 5, up: int = 80, down: int = 20, p95: float = 400.0,
        samples: int | None = None) -> ArmFigures:
    return ArmFigures(version, requests, errors, up, down, p95, requests - errors if samples is None else samples)


def check(analysis, name: str):  # type: ignore[no-untyped-def]
    return next(c for c in analysis.checks if c.name == name)


def test_a_canary_as_good_as_production_is_promoted() -> None:
    result = analyse(arm("v1"), arm("v2", errors=6, up=82, down=18, p95=420), POLICY)
    assert result.action == Action.promote
    assert all(c.verdict == Verdict.ok for c in result.checks)
    assert len(result.reasons) == 4  # errors, thumbs-down, latency, thumbs-up gain (reported, not required)


def test_mostly_thumbs_down_is_rolled_back_with_the_reason() -> None:
    result = analyse(arm("v1", up=80, down=20), arm("v2", up=30, down=70), POLICY)
    assert result.action == Action.rollback
    thumbs = check(result, "thumbs_down")
    assert thumbs.verdict == Verdict.worse and thumbs.p_value is not None and thumbs.p_value < 1e-6
    assert any("thumbs-down rate canary 70.0%" in r for r in result.reasons)


def test_more_errors_is_rolled_back_even_when_ratings_are_missing() -> None:
    result = analyse(arm("v1", errors=5, up=0, down=0), arm("v2", errors=80, up=0, down=0), POLICY)
    assert result.action == Action.rollback
    assert check(result, "errors").verdict == Verdict.worse
    assert check(result, "thumbs_down").verdict == Verdict.unknown  # too few ratings, but errors decide


def test_slower_canary_is_rolled_back() -> None:
    result = analyse(arm("v1", p95=400), arm("v2", p95=900), POLICY)
    assert result.action == Action.rollback
    assert "x2.25" in check(result, "latency").reason


@pytest.mark.parametrize("canary, production, what", [
    (arm("v2", requests=50, errors=0), arm("v1"), "error rate: too few samples"),
    (arm("v2", up=10, down=2), arm("v1"), "thumbs-down rate: too few samples"),
    (arm("v2"), arm("v1", requests=100, errors=0), "too few"),
    (ArmFigures("v2"), ArmFigures("v1"), "too few"),
])
def test_too_few_samples_waits(canary: ArmFigures, production: ArmFigures, what: str) -> None:
    result = analyse(production, canary, POLICY)
    assert result.action == Action.wait
    assert any(what in r for r in result.reasons)


def test_a_worse_looking_but_not_significant_canary_waits() -> None:
    # 30 ratings each: 20% vs 33% thumbs down is above the +5% allowance but far from significant
    result = analyse(arm("v1", up=24, down=6), arm("v2", up=20, down=10), POLICY)
    thumbs = check(result, "thumbs_down")
    assert thumbs.verdict == Verdict.unknown and "not significant yet" in thumbs.reason
    assert result.action == Action.wait


def test_a_significant_increase_within_the_allowance_is_tolerated() -> None:
    # 0.2% -> 0.9% errors on 20k requests: significant, but within the 1-point allowance
    result = analyse(arm("v1", requests=20_000, errors=40), arm("v2", requests=20_000, errors=180), POLICY)
    errors = check(result, "errors")
    assert errors.p_value is not None and errors.p_value < 0.05
    assert errors.verdict == Verdict.ok


def test_non_inferiority_needs_enough_evidence() -> None:
    strict = CanaryPolicy(min_requests=200, min_ratings=30, require_non_inferiority=True)
    few = analyse(arm("v1", up=24, down=6), arm("v2", up=24, down=6), strict)
    assert check(few, "thumbs_down").verdict == Verdict.unknown and few.action == Action.wait
    many = analyse(arm("v1", up=2400, down=600), arm("v2", up=2410, down=590), strict)
    assert check(many, "thumbs_down").verdict == Verdict.ok


def test_ratings_not_required() -> None:
    policy = CanaryPolicy(min_requests=200, min_ratings=0)
    result = analyse(arm("v1", up=0, down=0), arm("v2", up=0, down=0), policy)
    assert result.action == Action.promote


def test_production_errors_do_not_count_against_the_canary() -> None:
    result = analyse(arm("v1", errors=100), arm("v2", errors=0), POLICY)
    assert check(result, "errors").verdict == Verdict.ok


def test_analysis_is_serialisable() -> None:
    data = analyse(arm("v1"), arm("v2"), POLICY).to_dict()
    names = {c["name"] for c in data["checks"]}
    assert data["action"] == "promote" and names == {"errors", "thumbs_down", "thumbs_up_gain", "latency"}


@pytest.mark.parametrize("fields, message", [
    ({"min_requests": -1}, "min_requests"),
    ({"min_ratings": 2.5}, "min_ratings"),
    ({"max_error_rate_increase": 1.5}, "max_error_rate_increase"),
    ({"max_thumbs_down_rate_increase": -0.1}, "max_thumbs_down_rate_increase"),
    ({"alpha": 0}, "alpha"),
    ({"max_p95_latency_ratio": 0.5}, "max_p95_latency_ratio"),
    ({"stages": (50, 10)}, "stages"),
    ({"stages": (10, 100)}, "stages"),
])
def test_policy_names_the_bad_field(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CanaryPolicy(**fields)


def test_policy_from_dict() -> None:
    assert CanaryPolicy.from_dict({"min_requests": 10, "stages": [20, 50]}).stages == (20, 50)
    with pytest.raises(ValueError, match=r"unknown field.*min_request"):
        CanaryPolicy.from_dict({"min_request": 10})


def test_figures_are_validated() -> None:
    with pytest.raises(ValueError, match="errors"):
        ArmFigures("v1", requests=1, errors=2)
    with pytest.raises(ValueError, match="thumbs_up"):
        ArmFigures("v1", thumbs_up=-1)


BETTER = CanaryPolicy(min_requests=30, min_ratings=20, max_p95_latency_ratio=3.0, require_better_thumbs=True)


def test_a_canary_users_like_better_is_promoted_on_the_thumbs_up_gain() -> None:
    result = analyse(arm("v1", up=4, down=96), arm("v2", up=90, down=10), BETTER)
    gain = next(c for c in result.checks if c.name == "thumbs_up_gain")
    assert result.action == Action.promote and gain.verdict == Verdict.ok
    assert gain.p_value is not None and gain.p_value < 1e-6 and "better at p < 0.01" in gain.reason


def test_a_canary_merely_not_worse_waits_when_a_gain_is_required() -> None:
    control = analyse(arm("v1", up=80, down=20), arm("v2", up=82, down=18), POLICY)
    result = analyse(arm("v1", up=80, down=20), arm("v2", up=82, down=18), BETTER)
    assert control.action == Action.promote  # the same figures pass when a gain is not required
    assert result.action == Action.wait and any("not shown better yet" in r for r in result.reasons)


def test_better_alpha_is_validated() -> None:
    with pytest.raises(ValueError, match="better_alpha"):
        CanaryPolicy(better_alpha=0)


def test_latency_can_be_left_out_where_arms_share_their_hardware() -> None:
    slow = arm("v2", p95=4000.0)
    assert analyse(arm("v1"), slow, POLICY).action == Action.rollback  # the control: x10 is worse at x1.5
    result = analyse(arm("v1"), slow, CanaryPolicy(min_requests=30, min_ratings=20, max_p95_latency_ratio=None))
    latency = next(c for c in result.checks if c.name == "latency")
    assert result.action == Action.promote and "not checked" in latency.reason


def test_a_canary_that_served_nothing_says_no_canary_traffic_with_the_stage_age_and_weight() -> None:
    production, silent = arm("v1", requests=900), ArmFigures("v2")
    result = analyse(production, silent, POLICY, canary_weight=20, stage_running_s=2 * 3600 + 5 * 60 + 7)
    assert result.action == Action.wait and result.no_canary_traffic
    assert result.reasons[0] == ("no canary traffic: v2 has served 0 requests in this stage (running 2h 05m at "
                                 "canary weight 20%); check that its server is running and that apps call the alias")
    assert any("too few samples" in r for r in result.reasons[1:])  # the checks' own reasons still follow
    assert result.to_dict()["no_canary_traffic"] is True and result.to_dict()["reasons"][0] == result.reasons[0]
    at_zero = analyse(production, silent, POLICY, canary_weight=0, stage_running_s=30)
    assert at_zero.reasons[0].endswith("(running 30s at canary weight 0%); weight 0% sends it nothing")
    bare = analyse(production, silent, POLICY)  # no stage facts given: still said, without them
    assert bare.reasons[0].startswith(f"{NO_CANARY_TRAFFIC}: v2 has served 0 requests in this stage;")


def test_one_canary_request_is_not_no_traffic_and_the_reason_changes_no_decision() -> None:
    one = analyse(arm("v1", requests=900), arm("v2", requests=1, errors=0, up=0, down=0), POLICY,
                  canary_weight=20, stage_running_s=60)
    assert one.action == Action.wait and not one.no_canary_traffic  # the control: too few, but not none
    assert not any(NO_CANARY_TRAFFIC in r for r in one.reasons)
    lax = CanaryPolicy(min_requests=0, min_ratings=0, max_p95_latency_ratio=None)
    for policy in (POLICY, lax, BETTER):
        with_facts = analyse(arm("v1"), ArmFigures("v2"), policy, canary_weight=20, stage_running_s=60)
        without = analyse(arm("v1"), ArmFigures("v2"), policy)
        assert (with_facts.action, with_facts.checks) == (without.action, without.checks)
        assert with_facts.reasons[1:] == without.reasons[1:]


@pytest.mark.parametrize("seconds, text", [
    (0, "0s"), (45.9, "45s"), (750, "12m 30s"), (3 * 3600 + 5 * 60, "3h 05m"), (2 * 86400 + 4 * 3600, "2d 04h"),
    (-5, "0s"),
])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
