"""Run history of the improvement cycle (a row per cycle and per step) and the cross-process lease.

The lease is one row per name with an expiry: only its holder may run a cycle (or lead the workers), a
heartbeat extends it, and a holder that died lets it expire - or frees it at once when the taker runs on the
same machine and sees the holder's process gone (a worker restarted after kill -9 need not wait out the
TTL). Taking it is one transaction (row lock on PostgreSQL, BEGIN IMMEDIATE on SQLite), so two schedulers on
two machines never both win.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, Column, Engine, String, Text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Field, Session, SQLModel, select

from core.clock import UTCDateTime, utcnow
from core.db import unit_of_work


class RunStatus(StrEnum):
    running = "running"
    succeeded = "succeeded"
    skipped = "skipped"
    failed = "failed"
    abandoned = "abandoned"  # its process died; cleaned up by a later start


class Lease(SQLModel, table=True):
    __tablename__ = "leases"

    name: str = Field(primary_key=True)
    holder: str
    acquired_at: datetime = Field(sa_type=UTCDateTime, default_factory=utcnow)
    heartbeat_at: datetime = Field(sa_type=UTCDateTime, default_factory=utcnow)
    expires_at: datetime = Field(sa_type=UTCDateTime)


class CycleRunBase(SQLModel):
    alias: str = Field(index=True)
    trigger: str = Field(default="manual", description="schedule or manual")
    status: RunStatus = Field(default=RunStatus.running, sa_type=String(16))
    reason: str | None = Field(default=None, sa_column=Column(Text))
    holder: str = ""
    dataset_id: str | None = None
    version_id: str | None = None
    figures: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    error: str | None = Field(default=None, sa_column=Column(Text))
    started_at: datetime = Field(sa_type=UTCDateTime, default_factory=utcnow, index=True)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class CycleRun(CycleRunBase, table=True):
    __tablename__ = "cycle_runs"

    id: int | None = Field(default=None, primary_key=True)


class CycleRunPublic(CycleRunBase):
    id: int
    steps: list[CycleStepPublic] = []


class CycleStepBase(SQLModel):
    name: str
    status: RunStatus = Field(default=RunStatus.running, sa_type=String(16))
    figures: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    error: str | None = Field(default=None, sa_column=Column(Text))
    started_at: datetime = Field(sa_type=UTCDateTime, default_factory=utcnow)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class CycleStep(CycleStepBase, table=True):
    __tablename__ = "cycle_steps"

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="cycle_runs.id", index=True)


class CycleStepPublic(CycleStepBase):
    id: int
    run_id: int


CycleRunPublic.model_rebuild()


def make_holder(tag: str) -> str:
    """A lease holder's name: machine (its name and boot: cloned machines share a name, a reboot reuses pids),
    process and a random tag (a reused pid is not the same holder)."""
    return f"{_machine()}:{os.getpid()}:{tag}"


def _machine() -> str:
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        boot = "noboot"
    return f"{socket.gethostname()}/{boot}"


def holder_died_here(holder: str) -> bool:
    """The holder was a process on this machine that no longer exists: its lease need not run out. A pid that
    is alive (perhaps reused) or a holder on another machine is never presumed dead; those leases expire."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != _machine() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _is_zombie(int(pid))


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def acquire_lease(engine: Engine, name: str, holder: str, ttl_s: float) -> bool:
    """Take the lease if it is free, expired, ours, or held by a process of this machine that died; False
    when someone else holds it."""
    now = utcnow()
    try:
        with unit_of_work(engine) as session:  # BEGIN IMMEDIATE on SQLite, a row lock on PostgreSQL
            row = session.exec(select(Lease).where(Lease.name == name).with_for_update()).first()
            if (row is not None and row.holder != holder and row.expires_at > now
                    and not holder_died_here(row.holder)):
                return False
            if row is None:
                row = Lease(name=name, holder=holder, expires_at=now + timedelta(seconds=ttl_s))
            else:
                if row.holder != holder:
                    row.acquired_at = now
                row.holder = holder
                row.heartbeat_at = now
                row.expires_at = now + timedelta(seconds=ttl_s)
            session.add(row)
    except (IntegrityError, OperationalError):
        return False  # another process inserted the first row, or (SQLite) held the write lock past the timeout
    return True


def heartbeat(engine: Engine, name: str, holder: str, ttl_s: float) -> bool:
    """Extend our lease; False if it was lost (expired and taken by someone else)."""
    now = utcnow()
    with unit_of_work(engine) as session:
        row = session.exec(select(Lease).where(Lease.name == name).with_for_update()).first()
        if row is None or row.holder != holder:
            return False
        row.heartbeat_at = now
        row.expires_at = now + timedelta(seconds=ttl_s)
        session.add(row)
        return True


def release_lease(engine: Engine, name: str, holder: str) -> None:
    with unit_of_work(engine) as session:
        row = session.exec(select(Lease).where(Lease.name == name).with_for_update()).first()
        if row is not None and row.holder == holder:
            session.delete(row)


def start_run(engine: Engine, alias: str, trigger: str, holder: str) -> CycleRun:
    with Session(engine, expire_on_commit=False) as session:
        run = CycleRun(alias=alias, trigger=trigger, holder=holder)
        session.add(run)
        session.commit()
        session.refresh(run)
        return run


def record_skipped_start(engine: Engine, alias: str, trigger: str, holder: str, reason: str) -> CycleRun:
    """A start that found the lease taken is recorded too, so ops can see it happened."""
    with Session(engine, expire_on_commit=False) as session:
        run = CycleRun(alias=alias, trigger=trigger, holder=holder, status=RunStatus.skipped, reason=reason,
                       finished_at=utcnow())
        session.add(run)
        session.commit()
        session.refresh(run)
        return run


def update_run(engine: Engine, run_id: int, **values: Any) -> None:
    with Session(engine) as session:
        run = session.get(CycleRun, run_id)
        if run is None:
            raise KeyError(f"cycle run {run_id} not found")
        for name, value in values.items():
            setattr(run, name, value)
        session.add(run)
        session.commit()


def start_step(engine: Engine, run_id: int, name: str) -> int:
    with Session(engine) as session:
        step = CycleStep(run_id=run_id, name=name)
        session.add(step)
        session.commit()
        session.refresh(step)
        assert step.id is not None
        return step.id


def finish_step(engine: Engine, step_id: int, status: RunStatus, figures: dict[str, Any] | None = None,
                error: str | None = None) -> None:
    with Session(engine) as session:
        step = session.get(CycleStep, step_id)
        if step is None:
            raise KeyError(f"cycle step {step_id} not found")
        step.status = status
        step.figures = figures or {}
        step.error = error
        step.finished_at = utcnow()
        session.add(step)
        session.commit()


def list_runs(engine: Engine, alias: str | None = None, limit: int = 50) -> list[CycleRunPublic]:
    with Session(engine) as session:
        statement = select(CycleRun).order_by(CycleRun.id.desc()).limit(limit)  # type: ignore[union-attr]
        if alias:
            statement = statement.where(CycleRun.alias == alias)
        return [CycleRunPublic.model_validate(r, from_attributes=True) for r in session.exec(statement)]


def get_run(engine: Engine, run_id: int) -> CycleRunPublic | None:
    with Session(engine) as session:
        run = session.get(CycleRun, run_id)
        if run is None:
            return None
        public = CycleRunPublic.model_validate(run, from_attributes=True)
        steps = session.exec(select(CycleStep).where(CycleStep.run_id == run_id).order_by(CycleStep.id))
        public.steps = [CycleStepPublic.model_validate(s, from_attributes=True) for s in steps]
        return public


def unfinished_runs(engine: Engine, alias: str | None) -> list[CycleRun]:
    """Runs still marked running, of one alias or (None) of all."""
    with Session(engine, expire_on_commit=False) as session:
        statement = select(CycleRun).where(CycleRun.status == RunStatus.running)
        if alias is not None:
            statement = statement.where(CycleRun.alias == alias)
        return list(session.exec(statement))
