"""Schedules: stored in the database through APScheduler, refused with a reason when they cannot work."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from core.db import make_engine
from core.settings import Settings
from deploy.scheduler import (
    CYCLE_JOB_PREFIX,
    REQUESTS_JOB,
    WATCH_JOB_PREFIX,
    ScheduleError,
    canary_step_now,
    parse_cron,
    run_cycle_now,
    set_schedule,
    show_schedule,
    start_scheduler,
)
from registry.reference_judge import ReferenceJudge
from registry.store import register_base
from tuneloop.cli import app
from tuneloop.compose import job_context


@pytest.fixture
def settings(any_db_url, tmp_path, demo_model_dir) -> Settings:
    register_base(make_engine(any_db_url), "demo", str(demo_model_dir))
    return Settings(home=tmp_path, database_url=any_db_url)


def test_bad_cron_is_refused_with_the_reason():
    with pytest.raises(ScheduleError, match="needs 5 fields"):
        parse_cron("0 3 * *")
    with pytest.raises(ScheduleError, match="61"):
        parse_cron("61 3 * * *")
    assert parse_cron("*/15 2-4 * * mon-fri")


def test_set_and_show_schedule(settings):
    with pytest.raises(ScheduleError, match="unknown to the registry"):
        set_schedule(settings, "nope", "0 3 * * *")
    first = set_schedule(settings, "demo", "0 3 * * *")
    assert first.id == CYCLE_JOB_PREFIX + "demo" and first.next_run is not None
    set_schedule(settings, "demo", "30 1 * * *")  # replaces, never duplicates
    jobs = show_schedule(settings)
    assert [job.id for job in jobs] == [CYCLE_JOB_PREFIX + "demo"]
    assert "hour='1', minute='30'" in jobs[0].trigger
    assert (jobs[0].next_run.hour, jobs[0].next_run.minute) == (1, 30)


def test_running_scheduler_keeps_a_set_schedule_and_watches_canaries(settings):
    set_schedule(settings, "demo", "30 1 * * *")
    scheduler = start_scheduler(job_context(settings.model_copy(update={"cycle": settings.cycle.model_copy(
        update={"aliases": ["demo"], "cron": "0 3 * * *", "canary_watch_s": 3600})}), judge=ReferenceJudge()))
    try:
        jobs = {job.id: job for job in scheduler.get_jobs()}
        assert set(jobs) == {CYCLE_JOB_PREFIX + "demo", WATCH_JOB_PREFIX + "demo", REQUESTS_JOB}
        assert "hour='1', minute='30'" in str(jobs[CYCLE_JOB_PREFIX + "demo"].trigger)
    finally:
        scheduler.shutdown(wait=False)


def test_cli_refuses_bad_schedules_without_a_traceback(settings, monkeypatch):
    monkeypatch.setenv("TUNELOOP_HOME", str(settings.home))
    monkeypatch.setenv("TUNELOOP_DATABASE_URL", settings.database_url)
    runner = CliRunner()
    bad = runner.invoke(app, ["schedule", "set", "--alias", "demo", "--cron", "0 25 * * *"])
    assert bad.exit_code == 2 and "refused" in bad.output and "25" in bad.output
    unknown = runner.invoke(app, ["schedule", "set", "--alias", "ghost", "--cron", "0 3 * * *"])
    assert unknown.exit_code == 2 and "unknown to the registry" in unknown.output
    assert show_schedule(settings) == []  # nothing was stored
    good = runner.invoke(app, ["schedule", "set", "--alias", "demo", "--cron", "0 3 * * *"])
    assert good.exit_code == 0, good.output


def test_the_jobs_run_with_the_context_their_process_built(settings, demo_model_dir):
    context = job_context(settings.model_copy(update={"base_model": str(demo_model_dir)}), judge=ReferenceJudge())
    watched = canary_step_now(context, "demo")
    assert watched["action"] == "wait" and watched["reasons"] == ["no canary running"]
    cycle = run_cycle_now(context, "demo", trigger="manual")
    assert cycle["status"] == "skipped" and "no new examples" in cycle["reason"]
