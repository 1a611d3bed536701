"""Every table's timestamps come back as the same instant, aware and in UTC, on SQLite and on PostgreSQL,
whatever zone the database session runs in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from sqlalchemy import event
from sqlmodel import Session, select

from core.api_keys import ApiKey, Scope
from core.clock import as_utc
from core.db import make_engine

KOLKATA = timezone(timedelta(hours=5, minutes=30))


def test_a_timestamp_reads_back_as_the_same_instant_in_utc(any_db_url: str) -> None:
    engine = make_engine(any_db_url)
    if engine.dialect.name == "postgresql":  # a server zone other than UTC must not shift what is read back

        @event.listens_for(engine, "connect")
        def _zone(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
            with dbapi_connection.cursor() as cursor:
                cursor.execute("SET TIME ZONE 'Asia/Kolkata'")

    written = datetime(2026, 11, 30, 9, 15, tzinfo=KOLKATA)  # 03:45 UTC
    naive = datetime(2026, 11, 30, 3, 45)  # a caller's naive value is taken as UTC
    with Session(engine) as session:
        session.add(ApiKey(id="k1", key_hash="h1", scope=Scope.app, created_at=written, revoked_at=naive))
        session.commit()
    with Session(engine) as session:
        row = session.exec(select(ApiKey).where(ApiKey.id == "k1")).one()
    engine.dispose()
    assert row.created_at.tzinfo == UTC and row.created_at == datetime(2026, 11, 30, 3, 45, tzinfo=UTC)
    assert row.revoked_at is not None and row.revoked_at.tzinfo == UTC
    assert row.revoked_at == row.created_at


def test_as_utc_converts_aware_values_and_labels_naive_ones() -> None:
    assert as_utc(datetime(2026, 1, 1, 5, 30, tzinfo=KOLKATA)) == datetime(2026, 1, 1, tzinfo=UTC)
    assert as_utc(datetime(2026, 1, 1)).tzinfo == UTC
