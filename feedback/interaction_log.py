"""Durable interaction log with group commit, and the feedback upsert.

One writer task owns the write path: callers enqueue a row and await its commit; the writer drains whatever
is queued (up to `max_batch`) into one transaction, so durability costs one fsync per batch rather than one
per request. A batch that one row makes fail (a constraint, a value the database refuses) is retried row by
row, so that row's caller alone gets RowRejected or DuplicateIdempotencyKey and every other row is committed.
Only an outage (connection or operational errors) is retried, and one that lasts beyond `store_wait_s` fails
the waiting callers with StoreUnavailable (-> 503); a row whose caller was told so is dropped from the queue, not
committed later (unless its commit was already under way), so a 503 leaves no row behind.

`write(row, replace=True)` is an upsert by primary key, batched the same way: a stream's final row replaces the
`in_progress` row written before its first byte (gateway.streaming).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, String
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import (
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
    StatementError,
)
from sqlmodel import Session, select

from feedback.models import (
    Feedback,
    FeedbackCreate,
    FeedbackPublic,
    Interaction,
    InteractionPublic,
    utcnow,
)

log = logging.getLogger("tuneloop.store")


class StoreUnavailable(RuntimeError):
    """The row could not be committed within the bounded wait."""


class RowRejected(RuntimeError):
    """The database refused this one row (the others of its batch were committed)."""


class DuplicateIdempotencyKey(RowRejected):
    """Another row already holds this (api key, Idempotency-Key)."""


@dataclass
class WriterStats:
    commits: int = 0
    rows: int = 0
    last_commit_s: float = 0.0
    consecutive_failures: int = 0
    on_commit: Callable[[float, int], None] | None = None


@dataclass
class _Pending:
    row: Interaction | dict[str, Any]  # a model, or its column values from `interaction_values`
    done: asyncio.Future[None]  # cancelled when its caller gave up waiting: then it is not written
    replace: bool = False  # an upsert by id rather than an insert


@dataclass
class InteractionLog:
    engine: Engine
    max_batch: int = 256
    queue_max: int = 10_000
    store_wait_s: float = 5.0
    stats: WriterStats = field(default_factory=WriterStats)

    def __post_init__(self) -> None:
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(self.queue_max)
        self._task: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    @property
    def healthy(self) -> bool:
        """False while the store keeps failing or the queue is full: new streams are refused (503)."""
        return self.stats.consecutive_failures == 0 and not self._queue.full()

    async def ensure_available(self) -> None:
        """Before a stream starts: if recent commits failed, probe the store; raise StoreUnavailable if down."""
        if self.healthy:
            return
        if self._queue.full():
            raise StoreUnavailable("interaction log queue is full")
        try:
            async with asyncio.timeout(self.store_wait_s):
                await asyncio.to_thread(_probe, self.engine)
        except (TimeoutError, SQLAlchemyError, OSError) as exc:
            raise StoreUnavailable(f"store probe failed: {type(exc).__name__}") from None
        self.stats.consecutive_failures = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="interaction-log-writer")

    async def stop(self) -> None:
        """Drain what is queued, then stop the writer."""
        if self._task is None:
            return
        await self._queue.join()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def write(self, row: Interaction | dict[str, Any], *, replace: bool = False) -> None:
        """Return once `row` is committed; raise StoreUnavailable, RowRejected or DuplicateIdempotencyKey
        otherwise. `replace`: insert it, or overwrite every column of the row with its id."""
        loop = asyncio.get_running_loop()
        pending = _Pending(row, loop.create_future(), replace)
        try:
            async with asyncio.timeout(self.store_wait_s):
                await self._queue.put(pending)
                await asyncio.shield(pending.done)
        except TimeoutError:
            pending.done.cancel()  # the caller answers 503: the writer must not commit it later
            raise StoreUnavailable(f"row not committed within {self.store_wait_s}s") from None

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._commit_with_retry(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _commit_with_retry(self, batch: list[_Pending]) -> None:
        deadline = time.monotonic() + self.store_wait_s
        delay = 0.05
        while True:
            batch = [p for p in batch if not p.done.done()]  # dropped: its caller already heard 503
            if not batch:
                return
            started = time.perf_counter()
            try:
                outcomes = await asyncio.to_thread(_commit_batch, self.engine, [(p.row, p.replace) for p in batch])
            except Exception as exc:  # retried, then 503 for this batch; never a dead writer that hangs them all
                log.warning("interaction batch of %d not committed: %r", len(batch), exc)
                outcomes = [exc] * len(batch)
            settled = [(p, o) for p, o in zip(batch, outcomes, strict=True) if not _is_outage(o)]
            for pending, outcome in settled:
                _settle(pending.done, outcome)  # type: ignore[arg-type]
            if settled:  # the store answered: it is up, whether it took each row or refused it
                elapsed = time.perf_counter() - started
                committed = sum(1 for _, outcome in settled if outcome is None)
                self.stats.consecutive_failures = 0
                self.stats.commits += 1
                self.stats.rows += committed
                self.stats.last_commit_s = elapsed
                if self.stats.on_commit:
                    self.stats.on_commit(elapsed, committed)
            batch = [p for p, o in zip(batch, outcomes, strict=True) if _is_outage(o)]
            if not batch:
                return
            self.stats.consecutive_failures += 1
            outage = next(o for o in outcomes if _is_outage(o))
            if time.monotonic() + delay >= deadline:
                log.error("interaction store unavailable: %s", outage)
                for pending in batch:
                    _settle(pending.done, StoreUnavailable(str(outage).splitlines()[0]))
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


def _is_outage(outcome: object) -> bool:
    """Connection and operational errors (and anything not a database error about the row) mean the store is
    down; retried. A row the database refuses (DataError, IntegrityError, ...) is that row's own error."""
    return isinstance(outcome, BaseException) and not isinstance(outcome, RowRejected)


def _probe(engine: Engine) -> None:
    with engine.connect() as connection:
        connection.exec_driver_sql("SELECT 1")


def _settle(future: asyncio.Future[None], error: Exception | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def _commit_batch(
    engine: Engine, rows: list[tuple[Interaction | dict[str, Any], bool]]
) -> list[Exception | None]:
    """Commit all (row, replace) in one transaction; when one row spoils it, fall back to one transaction per row.

    Returns, per row: None (committed), RowRejected (that row is refused; retrying cannot help), or the outage
    error (the row was not written; the caller retries it). Core executemany statements, not the ORM's unit of
    work: the rows are only written here, never read back, and the ORM's per-object bookkeeping cost more than
    the rest of the commit.
    """
    values = [_column_values(row) for row, _ in rows]
    statements = [_upsert(engine.dialect.name) if replace else _INSERT for _, replace in rows]
    inserts = [value for value, (_, replace) in zip(values, rows, strict=True) if not replace]
    upserts = [value for value, (_, replace) in zip(values, rows, strict=True) if replace]
    try:
        with engine.begin() as connection:
            if inserts:  # first: an upsert may replace a row this batch inserts, never the other way round
                connection.execute(_INSERT, inserts)
            if upserts:
                connection.execute(_upsert(engine.dialect.name), upserts)
        return [None] * len(rows)
    except (StatementError, TypeError, ValueError) as exc:  # the database's refusal, or a value the driver
        if _outage(exc):                                    # could not encode (psycopg raises TypeError itself)
            raise
    outcomes: list[Exception | None] = []
    for index, (value, statement) in enumerate(zip(values, statements, strict=True)):
        try:
            with engine.begin() as connection:
                connection.execute(statement, [value])
            outcomes.append(None)
        except (StatementError, TypeError, ValueError) as exc:
            if _outage(exc):  # the store went down part-way: the rest are retried with the batch
                return outcomes + [exc] * (len(values) - index)
            outcomes.append(_row_error(exc))
    return outcomes


def _outage(exc: Exception) -> bool:
    return isinstance(exc, OperationalError | InterfaceError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated)


def _row_error(exc: Exception) -> RowRejected:
    cause = getattr(exc, "orig", None) or exc
    first_line = (str(cause).splitlines() or [""])[0]
    if isinstance(exc, IntegrityError) and "idempotency" in str(exc).lower():
        return DuplicateIdempotencyKey(first_line)
    return RowRejected(f"{type(cause).__name__}: {first_line}")


_TABLE = Interaction.__table__  # type: ignore[attr-defined]
_INSERT = _TABLE.insert()
_COLUMNS = tuple(column.key for column in _TABLE.columns)


def _default(key: str) -> Callable[[], Any]:
    info = Interaction.model_fields[key]
    if info.default_factory is not None:
        return info.default_factory  # type: ignore[return-value]
    if info.is_required():
        def missing() -> Any:
            raise ValueError(f"interaction row without {key!r}")
        return missing
    return lambda: info.default


_DEFAULTS = {key: _default(key) for key in _COLUMNS}
_UPSERTS: dict[str, Any] = {}


def _upsert(dialect: str) -> Any:
    """INSERT ... ON CONFLICT (id) DO UPDATE of every column, in the dialect's own syntax (both have it)."""
    if dialect not in _UPSERTS:
        module = {"postgresql": postgresql, "sqlite": sqlite}.get(dialect)
        if module is None:
            raise NotImplementedError(f"no interaction upsert for {dialect!r}")
        statement = module.insert(_TABLE)
        _UPSERTS[dialect] = statement.on_conflict_do_update(
            index_elements=[_TABLE.c.id], set_={key: statement.excluded[key] for key in _COLUMNS if key != "id"})
    return _UPSERTS[dialect]
_TEXT_COLUMNS = tuple(column.key for column in _TABLE.columns  # AutoString is a TypeDecorator over String
                      if isinstance(getattr(column.type, "impl", column.type), String))


def interaction_values(**fields: Any) -> dict[str, Any]:
    """An interaction row as column values, with the model's defaults for what is not given.

    The same row as `Interaction(**fields)` (a table model does not validate either) at a tenth of the cost:
    the gateway builds one per request and only ever inserts it.
    """
    unknown = fields.keys() - _DEFAULTS.keys()
    if unknown:
        raise TypeError(f"not interaction columns: {sorted(unknown)}")
    values = {key: fields[key] if key in fields else _DEFAULTS[key]() for key in _COLUMNS}
    for key in _TEXT_COLUMNS:
        text = values[key]
        if text and "\x00" in text:  # PostgreSQL refuses NUL in text; the row is kept with U+FFFD instead
            values[key] = text.replace("\x00", "\ufffd")
    return values


def _column_values(row: Interaction | dict[str, Any]) -> dict[str, Any]:
    if isinstance(row, dict):
        return row
    return {key: getattr(row, key) for key in _COLUMNS}


def find_interaction(engine: Engine, response_or_request_id: str) -> Interaction | None:
    """Look an interaction up by the gateway's request id or by the upstream's response `id`."""
    if "\x00" in response_or_request_id:  # no id holds one, and PostgreSQL refuses to compare with it
        return None
    with Session(engine, expire_on_commit=False) as session:
        row = session.get(Interaction, response_or_request_id)
        if row is not None:
            return row
        statement = (select(Interaction).where(Interaction.response_id == response_or_request_id)
                     .order_by(Interaction.created_at))
        return session.exec(statement).first()


def interaction_with_feedback(engine: Engine, interaction_id: str) -> InteractionPublic | None:
    if "\x00" in interaction_id:
        return None  # no id holds NUL, and PostgreSQL refuses it in a text parameter
    with Session(engine) as session:
        row = session.get(Interaction, interaction_id)
        if row is None:
            return None
        ratings = session.exec(
            select(Feedback).where(Feedback.interaction_id == interaction_id).order_by(Feedback.id)
        ).all()
        public = InteractionPublic.model_validate(row, from_attributes=True)
        public.feedback = [FeedbackPublic.model_validate(f, from_attributes=True) for f in ratings]
        return public


def upsert_feedback(engine: Engine, interaction_id: str, body: FeedbackCreate, api_key_id: str) -> FeedbackPublic:
    """One rating per (interaction, end user): a second one replaces the first."""
    end_user = body.user or ""
    values = body.model_dump(include={"rating", "score", "comment", "correction"})
    for _attempt in range(3):
        with Session(engine, expire_on_commit=False) as session:
            existing = session.exec(
                select(Feedback).where(Feedback.interaction_id == interaction_id, Feedback.end_user == end_user)
            ).first()
            if existing is None:
                row = Feedback(interaction_id=interaction_id, end_user=end_user, api_key_id=api_key_id, **values)
            else:
                row = existing
                for name, value in values.items():
                    setattr(row, name, value)
                row.api_key_id = api_key_id
                row.updated_at = utcnow()
            session.add(row)
            try:
                session.commit()
            except IntegrityError:
                continue  # a concurrent first rating by the same user won the insert: update it instead
            return FeedbackPublic.model_validate(row, from_attributes=True)
    raise StoreUnavailable("feedback could not be written after 3 attempts")
