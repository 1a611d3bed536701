"""The improvement cycle's runner: one cycle at a time across processes, every step recorded.

A cycle is a list of named steps over a shared context. The runner takes the database lease (a second start
is recorded as skipped), heartbeats it while steps run, records a row per step with its figures, and turns a
`SkipCycle` into a recorded skip with its reason. A cycle whose process died is found by the next start
(its lease expired) and cleaned up there: its half-done work is undone by the steps' `cleanup` hooks.
"""

from __future__ import annotations

import logging
import threading
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from core.clock import utcnow
from core.tracing import close_span, epoch_ns, open_span, record_span
from deploy.cycle_runs import (
    CycleRunPublic,
    RunStatus,
    acquire_lease,
    finish_step,
    get_run,
    heartbeat,
    record_skipped_start,
    release_lease,
    start_run,
    start_step,
    unfinished_runs,
    update_run,
)
from deploy.cycle_runs import (
    make_holder as lease_holder,
)

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

log = logging.getLogger("tuneloop.cycle")

LEASE_NAME = "improvement-cycle"


class SkipCycle(Exception):
    """Raised by a step when the cycle should stop here without failing (too little new data, unchanged...).

    `figures` are recorded on the step like a finished step's (a rejecting gate keeps its scores)."""

    def __init__(self, reason: str, figures: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.figures = figures or {}


class LeaseLost(RuntimeError):
    """Our lease expired and may be held by another process: stop before doing more."""


@dataclass
class CycleContext:
    """What the steps share: the store, the alias, and whatever earlier steps produced."""

    engine: Engine
    alias: str
    run_id: int
    holder: str
    values: dict[str, Any] = field(default_factory=dict)
    lease_lost: threading.Event = field(default_factory=threading.Event)

    def check_lease(self) -> None:
        if self.lease_lost.is_set():
            raise LeaseLost("the cycle lease was lost; another process may be running a cycle")

    def remember(self, **values: Any) -> None:
        """Keep values for later steps, and record them on the run so a later start can clean up after us."""
        self.values.update(values)
        run = get_run(self.engine, self.run_id)
        figures = dict(run.figures if run else {})
        figures.setdefault("state", {}).update({k: v for k, v in values.items() if _jsonable(v)})
        update_run(self.engine, self.run_id, figures=figures,
                   **{k: v for k, v in values.items() if k in ("dataset_id", "version_id")})


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[CycleContext], dict[str, Any] | None]


@dataclass
class LeasePolicy:
    """How long a cycle's lease lives without a heartbeat, and how often it is renewed."""

    ttl_s: float = 120.0
    heartbeat_s: float = 20.0

    def __post_init__(self) -> None:
        if self.ttl_s <= 0:
            raise ValueError("ttl_s: must be > 0")
        if not 0 < self.heartbeat_s < self.ttl_s:
            raise ValueError("heartbeat_s: must be > 0 and shorter than ttl_s")


Cleanup = Callable[[Engine, CycleRunPublic], None]


def make_holder() -> str:
    return lease_holder("cycle-" + uuid.uuid4().hex[:8])


def run_cycle(
    engine: Engine,
    alias: str,
    steps: list[Step],
    *,
    trigger: str = "manual",
    lease: LeasePolicy | None = None,
    holder: str | None = None,
    cleanup: Cleanup | None = None,
    tracer: Tracer | None = None,
) -> CycleRunPublic:
    """Run the steps once under the lease; returns the recorded run (skipped when the lease is taken).

    `tracer`: the finished run becomes a span with a child per step (`trace_run`); None: no span is made."""
    lease = lease or LeasePolicy()
    holder = holder or make_holder()
    if not acquire_lease(engine, LEASE_NAME, holder, lease.ttl_s):
        skipped = record_skipped_start(engine, alias, trigger, holder, "another cycle holds the lease")
        log.info("cycle for %s skipped: lease held elsewhere", alias)
        run = get_run(engine, skipped.id) or CycleRunPublic.model_validate(skipped, from_attributes=True)
        if tracer is not None:
            trace_run(tracer, run)
        return run
    try:
        abandon_dead_runs(engine, alias, cleanup)
        run = start_run(engine, alias, trigger, holder)
        assert run.id is not None
        context = CycleContext(engine, alias, run.id, holder)
        stop_heartbeat = _start_heartbeat(engine, holder, lease, context.lease_lost)
        try:
            _run_steps(context, steps, cleanup)
        finally:
            stop_heartbeat.set()
    finally:
        release_lease(engine, LEASE_NAME, holder)
    finished = get_run(engine, context.run_id)
    if tracer is not None and finished is not None:
        trace_run(tracer, finished)
    return finished  # type: ignore[return-value]


def _run_steps(context: CycleContext, steps: list[Step], cleanup: Cleanup | None) -> None:
    engine = context.engine
    for step in steps:
        context.check_lease()
        step_id = start_step(engine, context.run_id, step.name)
        try:
            figures = step.run(context) or {}
        except SkipCycle as skip:
            finish_step(engine, step_id, RunStatus.skipped, figures=skip.figures, error=str(skip))
            update_run(engine, context.run_id, status=RunStatus.skipped, reason=f"{step.name}: {skip}",
                       finished_at=utcnow())
            return
        except Exception as exc:  # a failed step fails the cycle, recorded with its traceback
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            finish_step(engine, step_id, RunStatus.failed, error=traceback.format_exc()[-4000:])
            update_run(engine, context.run_id, status=RunStatus.failed, error=f"{step.name}: {detail}",
                       finished_at=utcnow())
            run = get_run(engine, context.run_id)
            if cleanup is not None and run is not None:
                _safe_cleanup(cleanup, engine, run)
            return
        finish_step(engine, step_id, RunStatus.succeeded, figures=_jsonable_dict(figures))
    update_run(engine, context.run_id, status=RunStatus.succeeded, finished_at=utcnow())


def trace_run(tracer: Tracer, run: CycleRunPublic) -> None:
    """A finished run as spans, from its recorded rows (the times the worker's metrics observe too): `cycle
    {alias}` with a child `cycle_step {name}` per finished step."""
    finished_at = run.finished_at or utcnow()
    failed = next((step for step in run.steps if step.status == RunStatus.failed), None)
    error_type = _error_type(run, failed.name) if failed is not None else None
    parent = open_span(tracer, f"cycle {run.alias}", epoch_ns(run.started_at), {
        "tuneloop.alias": run.alias, "tuneloop.cycle.id": run.id, "tuneloop.cycle.trigger": run.trigger,
        "tuneloop.cycle.status": str(run.status), "tuneloop.cycle.reason": run.reason,
        "tuneloop.cycle.dataset_id": run.dataset_id, "tuneloop.cycle.version_id": run.version_id,
        "tuneloop.cycle.duration_s": _seconds(run.started_at, finished_at), "error.type": error_type})
    for step in run.steps:
        if step.finished_at is None:  # never finished (its process died): no end to tell
            continue
        step_error = error_type if step is failed else None
        record_span(tracer, f"cycle_step {step.name}", epoch_ns(step.started_at), epoch_ns(step.finished_at), {
            "tuneloop.alias": run.alias, "tuneloop.cycle.id": run.id, "tuneloop.cycle.step": step.name,
            "tuneloop.cycle.step.outcome": str(step.status),
            "tuneloop.cycle.step.duration_s": _seconds(step.started_at, step.finished_at),
            "tuneloop.cycle.step.reason": step.error if step.status == RunStatus.skipped else None,
            "error.type": step_error}, parent=parent, error=run.error if step_error else None)
    close_span(parent, epoch_ns(finished_at), run.error if run.status == RunStatus.failed else None)


def _seconds(start: datetime, end: datetime) -> float:
    return max((end - start).total_seconds(), 0.0)


def _error_type(run: CycleRunPublic, step_name: str) -> str:
    """The failed step's exception class, from the run's error (`train: TrainingProcessError: ...`)."""
    detail = (run.error or "").removeprefix(f"{step_name}: ")
    return detail.splitlines()[0].partition(":")[0].strip() if detail.strip() else "failed"


def abandon_dead_runs(engine: Engine, alias: str | None, cleanup: Cleanup | None) -> list[int]:
    """Runs still marked running while we hold the lease belong to a process that died: clean them up (those
    of `alias`, or of every alias)."""
    abandoned = []
    for run in unfinished_runs(engine, alias):
        assert run.id is not None
        update_run(engine, run.id, status=RunStatus.abandoned, finished_at=utcnow(),
                   reason="its process died mid-cycle; cleaned up by a later start")
        public = get_run(engine, run.id)
        if cleanup is not None and public is not None:
            _safe_cleanup(cleanup, engine, public)
        abandoned.append(run.id)
    return abandoned


def _safe_cleanup(cleanup: Cleanup, engine: Engine, run: CycleRunPublic) -> None:
    try:
        cleanup(engine, run)
    except Exception:  # cleanup is best effort; the run row already says what failed
        log.exception("cleanup after cycle run %s failed", run.id)


def _start_heartbeat(engine: Engine, holder: str, lease: LeasePolicy, lost: threading.Event) -> threading.Event:
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(lease.heartbeat_s):
            try:
                if not heartbeat(engine, LEASE_NAME, holder, lease.ttl_s):
                    lost.set()
                    return
            except Exception:  # a store hiccup: try again next beat; the TTL covers a few misses
                log.exception("lease heartbeat failed")

    threading.Thread(target=beat, name="cycle-lease-heartbeat", daemon=True).start()
    return stop


def _jsonable(value: Any) -> bool:
    return isinstance(value, str | int | float | bool | type(None) | list | dict)


def _jsonable_dict(values: dict[str, Any]) -> dict[str, Any]:
    return {k: (v if _jsonable(v) else str(v)) for k, v in values.items()}
