"""Database engines and schema migrations, shared by every package that keeps state in the store.

SQLite (the embedded default) runs in WAL mode with synchronous=FULL: a committed row survives a power
cut. PostgreSQL is reached through psycopg 3 for several gateway processes on one database.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

# What store and query functions take: a Session works inside the caller's transaction (the caller commits);
# an Engine gets a transaction of its own. A unit of work that spans several calls (a canary promotion: the
# registry pointers and the old server's drain) passes one Session to all of them.
Db = Engine | Session

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 5000
# pg_advisory_lock key of schema migrations ("tuneloop" as a number); every process that migrates takes it.
MIGRATION_LOCK_KEY = 0x74756E656C6F6F70


class SchemaError(RuntimeError):
    """The database's schema is not the one this code needs; the message says which command fixes it."""


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
    """Apply the explicit migrations in core/migrations/versions up to `revision`, under the migration lock
    (several processes starting at once: one migrates, the others wait and find the schema at head). A
    database already at a revision this code does not know (a newer release migrated it) is refused."""
    with migration_lock(url):
        _refuse_newer(url, current_revision(url))
        command.upgrade(alembic_config(url), revision)


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def current_revision(url: str) -> str | None:
    """The database's schema revision; None when it has none yet (never migrated, or a SQLite file not made
    yet: it is not created here). An unreachable database is a SchemaError saying so."""
    url = normalise_url(url)
    parsed = make_url(url)
    if url.startswith("sqlite") and parsed.database not in (None, "", ":memory:") \
            and not Path(parsed.database).exists():
        return None
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
        raise SchemaError(f"cannot reach database {_shown(url)}: {reason}") from None
    finally:
        engine.dispose()


def check_schema(url: str) -> None:
    """Refuse a database whose schema is missing, older or newer than this code's; never changes it."""
    current = current_revision(url)
    _refuse_newer(url, current)
    head = head_revision()
    if current is None:
        raise SchemaError(f"database {_shown(url)} has no tuneloop schema yet: run `tuneloop migrate`")
    if current != head:
        raise SchemaError(f"database {_shown(url)} is at schema revision {current}, this code needs {head}: "
                          "run `tuneloop migrate`")


def _refuse_newer(url: str, current: str | None) -> None:
    known = {script.revision for script in ScriptDirectory.from_config(alembic_config(url)).walk_revisions()}
    if current is not None and current not in known:
        raise SchemaError(f"database {_shown(url)} is at schema revision {current}, newer than this code knows "
                          f"(head {head_revision()}): upgrade tuneloop on this machine; never run older code on it")


def _shown(url: str) -> str:
    return make_url(normalise_url(url)).render_as_string(hide_password=True)


@contextmanager
def migration_lock(url: str) -> Iterator[None]:
    """Exclusive while migrating: a PostgreSQL advisory lock (held by a session of its own), or on SQLite an
    flock on a file beside the database (SQLite's own lock cannot span alembic's several transactions)."""
    url = normalise_url(url)
    if url.startswith("sqlite"):
        path = make_url(url).database
        if not path or path == ":memory:":
            yield
            return
        lock_path = Path(path).with_name(Path(path).name + ".migrate-lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes, or when the process dies
            yield
        return
    engine = create_engine(url)
    try:
        try:
            connection = engine.connect()
        except OperationalError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
            raise SchemaError(f"cannot reach database {_shown(url)}: {reason}") from None
        with connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            connection.commit()
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
                connection.commit()
    finally:
        engine.dispose()


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
