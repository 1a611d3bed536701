"""An operator's hold on the schedule: a paused alias's scheduled cycles are skipped with the reason, a resumed one
runs again, and a requested cycle is run once by the leader's job, however often it was asked for."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import deploy.scheduler as scheduler_module
from core.db import make_engine
from core.settings import Settings
from deploy import controls
from deploy.cycle_runs import list_runs
from deploy.scheduler import REQUESTS_JOB, requested_cycles, scheduled_cycle, start_scheduler
from registry.errors import UnknownAlias
from registry.reference_judge import ReferenceJudge
from registry.store import register_base
from tuneloop.cli import app
from tuneloop.compose import job_context


@pytest.fixture
def settings(any_db_url, tmp_path, demo_model_dir) -> Settings:
    register_base(make_engine(any_db_url), "demo", str(demo_model_dir))
    return Settings(home=tmp_path, database_url=any_db_url, base_model=str(demo_model_dir))


@pytest.fixture
def context(settings, monkeypatch):  # type: ignore[no-untyped-def]
    built = job_context(settings, judge=ReferenceJudge())
    monkeypatch.setattr(scheduler_module, "_running", built)  # what start_scheduler does for its jobs
    return built


def test_a_paused_schedule_skips_its_cycles_with_the_reason_until_resumed(context) -> None:  # type: ignore[no-untyped-def]
    engine = context.engine
    ran = scheduled_cycle("demo")  # the control: an unpaused schedule runs the cycle (nothing to curate yet)
    assert ran["status"] == "skipped" and "no new examples" in ran["reason"]

    controls.pause(engine, "demo", "cli:ops", "GPU maintenance")
    held = scheduled_cycle("demo")
    assert held["status"] == "skipped" and held["reason"] == "schedule paused by cli:ops: GPU maintenance"
    assert list_runs(engine, "demo")[0].reason == held["reason"]
    asked = scheduled_cycle("demo", trigger="manual")  # asking is explicit: a paused schedule does not stop it
    assert "no new examples" in asked["reason"]

    controls.resume(engine, "demo", "cli:ops")
    again = scheduled_cycle("demo")
    assert "no new examples" in again["reason"]
    assert controls.control_state(engine, "demo").paused is False


def test_a_requested_cycle_runs_once_however_often_it_was_asked_for(context) -> None:  # type: ignore[no-untyped-def]
    engine = context.engine
    assert requested_cycles() == {}  # nothing asked: nothing run
    first = controls.request_run(engine, "demo", "console:key_1")
    second = controls.request_run(engine, "demo", "cli:ops")
    assert second.run_requested_at == first.run_requested_at and second.run_requested_by == "console:key_1"
    done = requested_cycles()
    assert list(done) == ["demo"] and "no new examples" in done["demo"]["reason"]
    assert [run.trigger for run in list_runs(engine, "demo")] == ["manual"]
    assert controls.control_state(engine, "demo").run_requested_at is None
    assert requested_cycles() == {}  # taken once


def test_the_leaders_scheduler_takes_requests(settings) -> None:  # type: ignore[no-untyped-def]
    scheduler = start_scheduler(job_context(settings.model_copy(update={"cycle": settings.cycle.model_copy(
        update={"aliases": []})}), judge=ReferenceJudge()))
    try:
        assert REQUESTS_JOB in {job.id for job in scheduler.get_jobs()}
    finally:
        scheduler.shutdown(wait=False)


def test_unknown_aliases_are_refused_and_nothing_is_stored(settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(settings.resolved_database_url)
    with pytest.raises(UnknownAlias, match="ghost"):
        controls.request_run(engine, "ghost", "cli:ops")
    assert controls.control_state(engine, "ghost").run_requested_at is None
    monkeypatch.setenv("TUNELOOP_HOME", str(settings.home))
    monkeypatch.setenv("TUNELOOP_DATABASE_URL", settings.resolved_database_url)
    runner = CliRunner()
    for args in (["schedule", "pause", "ghost", "--reason", "x"], ["schedule", "resume", "ghost"],
                 ["cycle", "request", "ghost"]):
        refused = runner.invoke(app, args)
        assert refused.exit_code == 1 and "refused" in refused.output and "ghost" in refused.output, args
        assert refused.exception is None or isinstance(refused.exception, SystemExit)
    paused = runner.invoke(app, ["schedule", "pause", "demo", "--reason", "release freeze"])
    assert paused.exit_code == 0, paused.output
    state = controls.control_state(engine, "demo")
    assert state.paused and state.paused_reason == "release freeze" and state.paused_by.startswith("cli:")
    asked = runner.invoke(app, ["cycle", "request", "demo"])
    assert asked.exit_code == 0 and controls.control_state(engine, "demo").run_requested_at is not None
    assert runner.invoke(app, ["schedule", "resume", "demo"]).exit_code == 0
    assert controls.control_state(engine, "demo").paused is False
