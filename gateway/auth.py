"""Bearer-key authentication with a small in-process cache, so a request costs no database round trip.

Revocation bound: a key revoked in the database (by any process) stops working in every gateway process within
`ttl_s` (2 s by default): a known key is looked up again at most that long after its last lookup. Both caches are
bounded in size and time (cachetools.TTLCache), so a client sending endless distinct invalid keys cannot grow
the gateway's memory; each such key costs one indexed lookup.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from dataclasses import dataclass, field

from cachetools import TTLCache
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, select

from core.api_keys import ApiKey, Scope, hash_key
from gateway.errors import forbidden, store_unavailable, unauthorized

ADMIN_BOOTSTRAP_ID = "admin-bootstrap"


@dataclass(frozen=True)
class Principal:
    key_id: str
    scope: Scope
    rpm: int | None = None  # the key's limits, as stored (None: unlimited)
    tpm: int | None = None

    @property
    def is_admin(self) -> bool:
        return self.scope == Scope.admin


REVOCATION_BOUND_S = 2.0


@dataclass
class KeyCache:
    """Key hashes and what they grant (None: no such key) for `ttl_s`, at most `max_entries` of them."""

    engine: Engine
    admin_key: str = ""
    ttl_s: float = REVOCATION_BOUND_S
    max_entries: int = 10_000
    _known: TTLCache = field(init=False)
    _lookups: dict[str, asyncio.Task[Principal | None]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._known = TTLCache(maxsize=self.max_entries, ttl=self.ttl_s, timer=time.monotonic)

    @property
    def cached_entries(self) -> int:
        return len(self._known)

    async def authenticate(self, authorization: str | None) -> Principal:
        if not authorization or not authorization.lower().startswith("bearer "):
            raise unauthorized("Missing API key: send 'Authorization: Bearer <key>'.")
        plain = authorization[7:].strip()
        if self.admin_key and hmac.compare_digest(plain.encode(), self.admin_key.encode()):
            return Principal(ADMIN_BOOTSTRAP_ID, Scope.admin)
        digest = hash_key(plain)
        try:
            principal = self._known[digest]
        except KeyError:
            principal = await self._shared_lookup(digest)
        if principal is None:
            raise unauthorized("Invalid API key.")
        return principal

    async def _shared_lookup(self, digest: str) -> Principal | None:
        """One database lookup per key however many of its requests arrive while the entry is stale."""
        task = self._lookups.get(digest)
        if task is None:
            task = asyncio.create_task(asyncio.to_thread(self._lookup, digest))
            self._lookups[digest] = task
            task.add_done_callback(lambda _: self._lookups.pop(digest, None))
        try:
            principal = await asyncio.shield(task)
        except SQLAlchemyError:
            raise store_unavailable() from None
        self._known[digest] = principal
        return principal

    def _lookup(self, digest: str) -> Principal | None:
        with Session(self.engine) as session:
            row = session.exec(select(ApiKey).where(ApiKey.key_hash == digest)).first()
        if row is None or row.revoked_at is not None or not hmac.compare_digest(row.key_hash, digest):
            return None
        return Principal(row.id, Scope(row.scope), rpm=row.rpm, tpm=row.tpm)


def require_admin(principal: Principal) -> Principal:
    if not principal.is_admin:
        raise forbidden("This endpoint needs an admin key.")
    return principal
