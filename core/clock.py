"""The project's one clock, and one datetime column type that always hands back aware UTC values.

Every table's timestamps are `timestamp with time zone` (the migrations). PostgreSQL hands them back aware, in
the session's zone; SQLite keeps no zone and hands them back naive. `UTCDateTime` writes UTC and reads aware
UTC on both, so no reader of a table repairs naive values.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import DateTime
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """An aware value in UTC; a naive one (a user's `--since 2026-11-01`) is taken as UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A `timestamp with time zone` column that writes UTC and always reads an aware UTC datetime."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        return None if value is None else as_utc(value)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        return None if value is None else as_utc(value)
