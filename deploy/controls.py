"""An operator's hold on the schedule: pause an alias's cycles, resume them, ask for a cycle now.

The rows live in the database so that any process can set them (the CLI, the console in a gateway) and the
workers' leader obeys them: a paused alias's cron cycles are recorded as skipped, and a request is taken by the
leader's request job within `worker.supervise_s` and run as a `manual` cycle (paused or not: asking is explicit).
The canary watch is not paused: it is what rolls back a canary users dislike.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, Text
from sqlmodel import Column, Field, Session, SQLModel, col, select

from core.clock import UTCDateTime, utcnow
from core.db import unit_of_work
from registry.errors import UnknownAlias
from registry.queries import get_alias_state


class ScheduleControl(SQLModel, table=True):
    __tablename__ = "schedule_controls"

    alias: str = Field(primary_key=True)
    paused: bool = False
    paused_by: str = ""
    paused_reason: str = Field(default="", sa_column=Column(Text, nullable=False))
    updated_at: datetime = Field(sa_type=UTCDateTime, default_factory=utcnow)
    run_requested_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    run_requested_by: str | None = None


@dataclass(frozen=True)
class ControlState:
    alias: str
    paused: bool = False
    paused_by: str = ""
    paused_reason: str = ""
    updated_at: datetime | None = None
    run_requested_at: datetime | None = None
    run_requested_by: str | None = None


def _state(row: ScheduleControl | None, alias: str) -> ControlState:
    if row is None:
        return ControlState(alias)
    return ControlState(row.alias, row.paused, row.paused_by, row.paused_reason, row.updated_at,
                        row.run_requested_at, row.run_requested_by)


def _row_for(session: Session, engine: Engine, alias: str) -> ScheduleControl:
    if get_alias_state(engine, alias) is None:
        raise UnknownAlias(f"no model alias {alias!r}")
    row = session.get(ScheduleControl, alias)
    if row is None:
        row = ScheduleControl(alias=alias)
        session.add(row)
    return row


def control_state(engine: Engine, alias: str) -> ControlState:
    with Session(engine) as session:
        return _state(session.get(ScheduleControl, alias), alias)


def pause(engine: Engine, alias: str, actor: str, reason: str) -> ControlState:
    with unit_of_work(engine) as session:
        row = _row_for(session, engine, alias)
        row.paused, row.paused_by, row.paused_reason, row.updated_at = True, actor, reason, utcnow()
        return _state(row, alias)


def resume(engine: Engine, alias: str, actor: str) -> ControlState:
    with unit_of_work(engine) as session:
        row = _row_for(session, engine, alias)
        row.paused, row.paused_by, row.paused_reason, row.updated_at = False, actor, "", utcnow()
        return _state(row, alias)


def request_run(engine: Engine, alias: str, actor: str) -> ControlState:
    """Ask the leader for a cycle of `alias`; a request already waiting stays the one (asking twice runs once)."""
    with unit_of_work(engine) as session:
        row = _row_for(session, engine, alias)
        if row.run_requested_at is None:
            row.run_requested_at, row.run_requested_by, row.updated_at = utcnow(), actor, utcnow()
        return _state(row, alias)


def take_requests(engine: Engine) -> list[ControlState]:
    """The waiting requests, cleared in the same transaction (each is taken once, by one leader)."""
    with unit_of_work(engine) as session:
        rows = list(session.exec(select(ScheduleControl).where(col(ScheduleControl.run_requested_at).is_not(None))))
        taken = [_state(row, row.alias) for row in rows]
        for row in rows:
            row.run_requested_at, row.run_requested_by = None, None
        return taken
