"""APScheduler jobs that run the loop: the cycle on a cron per alias, and the canary watch on an interval.

Jobs live in APScheduler's SQLAlchemy job store in the same database (its table is created by our
migrations), so every scheduler process sees the same schedule; the cycle lease makes sure only one of them
runs a cycle at a time. Job functions are module-level so the job store can name them; they run with the
`JobContext` the process handed to `start_scheduler` (its settings and judge), never with settings of their own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from core.db import make_engine
from core.settings import Settings
from registry.judges import Judge

log = logging.getLogger("tuneloop.scheduler")

CYCLE_JOB_PREFIX = "cycle:"
WATCH_JOB_PREFIX = "canary-watch:"


class ScheduleError(ValueError):
    """A schedule that cannot be set; the message says why."""


@dataclass(frozen=True)
class JobContext:
    """What the scheduler's jobs run with: the objects the process built at start-up."""

    settings: Settings
    judge: Judge


# The job store keeps jobs by function name and arguments only, so the running process's objects reach its
# jobs here; `start_scheduler` sets it.
_running: JobContext | None = None


@dataclass(frozen=True)
class ScheduledJob:
    id: str
    trigger: str
    next_run: datetime | None


def parse_cron(expression: str) -> CronTrigger:
    """A crontab expression (5 fields) as a trigger; a clear error otherwise."""
    fields = expression.split()
    if len(fields) != 5:
        raise ScheduleError(f"cron {expression!r}: needs 5 fields (minute hour day month weekday), got {len(fields)}")
    try:
        return CronTrigger.from_crontab(expression)
    except ValueError as exc:
        raise ScheduleError(f"cron {expression!r}: {exc}") from None


def make_scheduler(settings: Settings) -> BackgroundScheduler:
    store = SQLAlchemyJobStore(engine=make_engine(settings.resolved_database_url))
    return BackgroundScheduler(jobstores={"default": store}, job_defaults={"coalesce": True, "max_instances": 1,
                                                                           "misfire_grace_time": 3600})


def set_schedule(settings: Settings, alias: str, cron: str) -> ScheduledJob:
    """Store the cycle schedule of `alias`; refuses a bad cron or an alias the registry does not know."""
    from registry.store import get_alias_state

    trigger = parse_cron(cron)
    if get_alias_state(make_engine(settings.resolved_database_url), alias) is None:
        raise ScheduleError(f"alias {alias!r}: unknown to the registry (register its base model first)")
    scheduler = make_scheduler(settings)
    scheduler.start(paused=True)
    try:
        job = scheduler.add_job(scheduled_cycle, trigger, args=[alias], id=CYCLE_JOB_PREFIX + alias,
                                name=f"improvement cycle of {alias}", replace_existing=True)
        return ScheduledJob(job.id, cron, job.next_run_time)
    finally:
        scheduler.shutdown(wait=False)


def show_schedule(settings: Settings) -> list[ScheduledJob]:
    scheduler = make_scheduler(settings)
    scheduler.start(paused=True)
    try:
        return [ScheduledJob(job.id, str(job.trigger), job.next_run_time) for job in scheduler.get_jobs()]
    finally:
        scheduler.shutdown(wait=False)


def start_scheduler(context: JobContext) -> BackgroundScheduler:
    """The running scheduler of `tuneloop up`: the configured aliases' cycles (unless already scheduled with
    another cron by `tuneloop schedule set`) and a canary watch per alias, run with `context`."""
    global _running
    _running = context
    settings = context.settings
    scheduler = make_scheduler(settings)
    scheduler.start(paused=True)
    existing = {job.id for job in scheduler.get_jobs()}
    for alias in settings.cycle.aliases:
        if CYCLE_JOB_PREFIX + alias not in existing:
            scheduler.add_job(scheduled_cycle, parse_cron(settings.cycle.cron), args=[alias],
                              id=CYCLE_JOB_PREFIX + alias, name=f"improvement cycle of {alias}")
        scheduler.add_job(watch_canary, IntervalTrigger(seconds=settings.cycle.canary_watch_s), args=[alias],
                          id=WATCH_JOB_PREFIX + alias, name=f"canary watch of {alias}", replace_existing=True)
    scheduler.resume()
    return scheduler


def _context() -> JobContext:
    if _running is None:
        raise RuntimeError("scheduler jobs run in the process that started the scheduler (start_scheduler)")
    return _running


def scheduled_cycle(alias: str, trigger: str = "schedule") -> dict[str, Any]:
    """The cron job: one cycle of `alias`."""
    return run_cycle_now(_context(), alias, trigger)


def watch_canary(alias: str) -> dict[str, Any]:
    """The interval job: one canary analysis step of `alias`."""
    return canary_step_now(_context(), alias)


def run_cycle_now(context: JobContext, alias: str, trigger: str) -> dict[str, Any]:
    """One cycle of `alias` (skipped, and recorded, if another cycle holds the lease)."""
    from deploy.cycle import LeasePolicy, run_cycle
    from deploy.cycle_steps import CyclePolicy, build_steps, cleanup_run
    from deploy.launcher import Launcher

    settings = context.settings
    engine = make_engine(settings.resolved_database_url)
    launcher = Launcher.for_settings(engine, settings, mode=settings.cycle.serve_mode)
    policy = CyclePolicy(alias=alias, min_new_examples=settings.cycle.min_new_examples,
                         canary_weight=settings.cycle.canary_weight, train_overrides=settings.cycle.train,
                         gate=settings.cycle.gate)
    lease = LeasePolicy(ttl_s=settings.cycle.lease_ttl_s, heartbeat_s=settings.cycle.lease_ttl_s / 5)
    try:
        run = run_cycle(engine, alias, build_steps(settings, launcher, policy, context.judge), trigger=trigger,
                        lease=lease, cleanup=cleanup_run(launcher))
    finally:
        engine.dispose()  # a job runs every minute or night: its connections must not outlive it
    log.info("cycle %s of %s: %s %s", run.id, alias, run.status, run.reason or "")
    return {"id": run.id, "status": str(run.status), "reason": run.reason}


def canary_step_now(context: JobContext, alias: str) -> dict[str, Any]:
    """One canary analysis step of `alias`: promote, roll back, advance a stage, or wait."""
    from deploy.canary import step
    from deploy.launcher import Launcher

    settings = context.settings
    engine = make_engine(settings.resolved_database_url)
    launcher = Launcher.for_settings(engine, settings, mode=settings.cycle.serve_mode)
    try:
        result = step(engine, alias, settings.cycle.canary, launcher=launcher)
    finally:
        engine.dispose()
    if str(result.action) != "wait":
        log.info("canary %s of %s: %s (%s)", result.canary_id, alias, result.action, "; ".join(result.reasons))
    return result.to_dict()
