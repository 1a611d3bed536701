"""Database engines and schema migrations, shared by every package that keeps state in the store.

SQLite (the embedded default) runs in WAL mode with synchronous=FULL: a committed row survives a power
cut. PostgreSQL is reached through psycopg 3 for several gateway processes on one database.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlmodel import Session

# What store and query functions take: a Session works inside the caller's transaction (the caller commits);
# an Engine gets a transaction of its own. A unit of work that spans several calls (a canary promotion: the
# registry pointers and the old server's drain) passes one Session to all of them.
Db = Engine | Session

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 5000


def normalise_url(url: str) -> str:
    """postgresql:// means psycopg 3 here (SQLAlchemy would default to psycopg2)."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def make_engine(url: str, *, pool_size: int = 5) -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        path = make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return config


def migrate(url: str, revision: str = "head") -> None:
    """Apply the explicit migrations in core/migrations/versions up to `revision`."""
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


@contextmanager
def unit_of_work(engine: Engine) -> Iterator[Session]:
    """One transaction: committed when the block ends, rolled back if it raises. On SQLite the write lock is
    taken up front (BEGIN IMMEDIATE): a deferred transaction would read, then fail to upgrade its lock."""
    with Session(engine, expire_on_commit=False) as session:
        if engine.dialect.name == "sqlite":
            session.connection().exec_driver_sql("BEGIN IMMEDIATE")
        yield session
        session.commit()


@contextmanager
def writing(db: Db) -> Iterator[Session]:
    """The caller's session (its transaction, its commit), or a unit of work of its own on an engine."""
    if isinstance(db, Session):
        yield db
        db.flush()
    else:
        with unit_of_work(db) as session:
            yield session


@contextmanager
def reading(db: Db) -> Iterator[Session]:
    """The caller's session, or a short read-only one on an engine."""
    if isinstance(db, Session):
        yield db
    else:
        with Session(db) as session:
            yield session
