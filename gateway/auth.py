"""Bearer-key authentication with a small in-process cache, so a request costs no database round trip."""

from __future__ import annotations

import asyncio
import hmac
import time
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlmodel import Session, select

from gateway.errors import forbidden, unauthorized
from gateway.keys import ApiKey, Scope, hash_key

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


@dataclass
class KeyCache:
    """Known key hashes for `ttl_s`; unknown hashes are looked up once per `negative_ttl_s`."""

    engine: Engine
    admin_key: str = ""
    ttl_s: float = 30.0
    negative_ttl_s: float = 2.0
    _known: dict[str, tuple[Principal | None, float]] = field(default_factory=dict)

    async def authenticate(self, authorization: str | None) -> Principal:
        if not authorization or not authorization.lower().startswith("bearer "):
            raise unauthorized("Missing API key: send 'Authorization: Bearer <key>'.")
        plain = authorization[7:].strip()
        if self.admin_key and hmac.compare_digest(plain.encode(), self.admin_key.encode()):
            return Principal(ADMIN_BOOTSTRAP_ID, Scope.admin)
        digest = hash_key(plain)
        now = time.monotonic()
        cached = self._known.get(digest)
        if cached is None or cached[1] < now:
            principal = await asyncio.to_thread(self._lookup, digest)
            ttl = self.ttl_s if principal else self.negative_ttl_s
            self._known[digest] = (principal, now + ttl)
            cached = self._known[digest]
        if cached[0] is None:
            raise unauthorized("Invalid API key.")
        return cached[0]

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
