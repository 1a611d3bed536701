"""APScheduler jobs that run the loop: the cycle on a cron per alias, and the canary watch on an interval.

Jobs live in APScheduler's SQLAlchemy job store in the same database (its table is created by our
migrations). APScheduler 3 does not support several running schedulers on one job store, so only the workers'
leader runs one (deploy/worker.py), and every job checks that its process still leads before it does anything;
the cycle lease is a second guard around the cycle itself. Job functions are module-level so the job store can
name them; they run with the `JobContext` the process handed to `start_scheduler` (its settings, judge, engine
and launcher), never with objects of their own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine

from core.clock import utcnow
from core.db import make_engine
from core.settings import Settings
from registry.judges import Judge

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

    from deploy.launcher import Launcher
    from deploy.worker_metrics import WorkerMetrics

log = logging.getLogger("tuneloop.scheduler")

CYCLE_JOB_PREFIX = "cycle:"
WATCH_JOB_PREFIX = "canary-watch:"
SUPERVISE_JOB = "supervise-servers"
REQUESTS_JOB = "requested-cycles"


class ScheduleError(ValueError):
    """A schedule that cannot be set; the message says why."""


def _always() -> bool:
    return True


@dataclass(frozen=True)
class JobContext:
    """What the scheduler's jobs run with: the objects the process built at start-up. `leading` says whether
    this process may run jobs now (the workers' leader lease); `metrics` records what they did."""

    settings: Settings
    judge: Judge
    engine: Engine
    launcher: Launcher
    leading: Callable[[], bool] = field(default=_always)
    metrics: WorkerMetrics | None = None
    tracer: Tracer | None = None  # a span per cycle and per step (deploy.cycle.trace_run); None: none made


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


def start_scheduler(context: JobContext, *, supervise_s: float | None = None) -> BackgroundScheduler:
    """The leader's running scheduler: the configured aliases' cycles (unless already scheduled with another
    cron by `tuneloop schedule set`), a canary watch per alias and the cycles operators asked for (every
    `worker.supervise_s`), run with `context`; with `supervise_s`, also the supervision (clean-up of dead cycles,
    vLLM servers) now and every `supervise_s`."""
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
    scheduler.add_job(requested_cycles, IntervalTrigger(seconds=settings.worker.supervise_s), id=REQUESTS_JOB,
                      name="cycles operators asked for", replace_existing=True)
    if supervise_s is not None:
        scheduler.add_job(supervise_servers, IntervalTrigger(seconds=supervise_s), id=SUPERVISE_JOB,
                          name="supervise vLLM servers", replace_existing=True, next_run_time=utcnow())
    scheduler.resume()
    return scheduler


def _context() -> JobContext:
    if _running is None:
        raise RuntimeError("scheduler jobs run in the process that started the scheduler (start_scheduler)")
    return _running


def _as_leader(job: str, body: Callable[[JobContext], dict[str, Any]]) -> dict[str, Any]:
    """Run a job body only while this process leads; its start and end are logged with wall-clock stamps
    (what an operator - and the leader tests - read to see that no job ran in two places at once)."""
    context = _context()
    if not context.leading():
        log.info("job %s not run: this process no longer leads", job)
        return {"skipped": "not the leader"}
    log.debug("job %s start %.3f", job, time.time())
    try:
        return body(context)
    finally:
        log.debug("job %s end %.3f", job, time.time())


def scheduled_cycle(alias: str, trigger: str = "schedule") -> dict[str, Any]:
    """The cron job: one cycle of `alias`, unless an operator paused its schedule (then a skipped run says so)."""

    def body(context: JobContext) -> dict[str, Any]:
        from deploy.controls import control_state
        from deploy.cycle_runs import make_holder, record_skipped_start

        hold = control_state(context.engine, alias)
        if trigger == "schedule" and hold.paused:
            why = f"schedule paused by {hold.paused_by}" + (f": {hold.paused_reason}" if hold.paused_reason else "")
            run = record_skipped_start(context.engine, alias, trigger, make_holder("scheduler"), why)
            return {"id": run.id, "status": str(run.status), "reason": why}
        return run_cycle_now(context, alias, trigger)

    return _as_leader(CYCLE_JOB_PREFIX + alias, body)


def requested_cycles() -> dict[str, Any]:
    """The interval job: the cycles operators asked for (`tuneloop cycle request`, the console), one by one."""
    from deploy.controls import take_requests

    def body(context: JobContext) -> dict[str, Any]:
        done = {}
        for request in take_requests(context.engine):
            log.info("cycle of %s requested by %s", request.alias, request.run_requested_by)
            done[request.alias] = run_cycle_now(context, request.alias, "manual")
        return done

    return _as_leader(REQUESTS_JOB, body)


def watch_canary(alias: str) -> dict[str, Any]:
    """The interval job: one canary analysis step of `alias`."""
    return _as_leader(WATCH_JOB_PREFIX + alias, lambda context: canary_step_now(context, alias))


def supervise_servers() -> dict[str, Any]:
    """The interval job: clean up after dead cycles, restart dead vLLM servers, serve every alias's versions."""
    from deploy.cycle_steps import cleanup_run
    from deploy.supervise import recover_cycles, supervise

    def body(context: JobContext) -> dict[str, Any]:
        recovered = recover_cycles(context.engine, cleanup_run(context.launcher), context.settings.cycle.lease_ttl_s)
        return {**supervise(context.launcher), **recovered}

    return _as_leader(SUPERVISE_JOB, body)


def run_cycle_now(context: JobContext, alias: str, trigger: str) -> dict[str, Any]:
    """One cycle of `alias` (skipped, and recorded, if another cycle holds the lease)."""
    from deploy.cycle import LeasePolicy, run_cycle
    from deploy.cycle_steps import CyclePolicy, build_steps, cleanup_run

    settings = context.settings
    policy = CyclePolicy(alias=alias, min_new_examples=settings.cycle.min_new_examples,
                         canary_weight=settings.cycle.canary_weight, train_overrides=settings.cycle.train,
                         gate=settings.cycle.gate)
    lease = LeasePolicy(ttl_s=settings.cycle.lease_ttl_s, heartbeat_s=settings.cycle.lease_ttl_s / 5)
    run = run_cycle(context.engine, alias, build_steps(settings, context.launcher, policy, context.judge),
                    trigger=trigger, lease=lease, cleanup=cleanup_run(context.launcher), tracer=context.tracer)
    log.info("cycle %s of %s: %s %s", run.id, alias, run.status, run.reason or "")
    if context.metrics is not None:
        from deploy.worker_metrics import observe_run

        observe_run(context.metrics, run)
    return {"id": run.id, "status": str(run.status), "reason": run.reason}


def canary_step_now(context: JobContext, alias: str) -> dict[str, Any]:
    """One canary analysis step of `alias`: promote, roll back, advance a stage, or wait."""
    from deploy.canary import step

    result = step(context.engine, alias, context.settings.cycle.canary, launcher=context.launcher)
    if str(result.action) != "wait":
        log.info("canary %s of %s: %s (%s)", result.canary_id, alias, result.action, "; ".join(result.reasons))
    if context.metrics is not None:
        from deploy.worker_metrics import observe_canary

        observe_canary(context.metrics, alias, str(result.action))
    return result.to_dict()
