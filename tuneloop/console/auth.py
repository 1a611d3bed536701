"""Who may see the console: a signed session naming an admin key that is still an admin key.

Sign-in checks the pasted key the way the API does (the gateway's key cache); afterwards each request checks
the key id from the cookie against the database (one indexed read: the console is not a hot path), so a revoked
or demoted key's sessions end at their next click.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from fastapi import Request
from sqlalchemy import Engine
from sqlmodel import Session

from core.api_keys import ApiKey, Scope
from gateway.auth import ADMIN_BOOTSTRAP_ID
from tuneloop.console.session import COOKIE_NAME, ConsoleSession, SessionCodec


@dataclass(frozen=True)
class SignedIn:
    key_id: str
    session: ConsoleSession


def key_is_admin(engine: Engine, key_id: str, bootstrap_admin: bool) -> bool:
    if key_id == ADMIN_BOOTSTRAP_ID:
        return bootstrap_admin
    with Session(engine) as session:
        row = session.get(ApiKey, key_id)
        return row is not None and row.revoked_at is None and row.scope == Scope.admin


async def signed_in(request: Request, codec: SessionCodec, engine: Engine, bootstrap_admin: bool) -> SignedIn | None:
    session = codec.read(request.cookies.get(COOKIE_NAME))
    if session is None:
        return None
    if not await asyncio.to_thread(key_is_admin, engine, session.key_id, bootstrap_admin):
        return None
    return SignedIn(session.key_id, session)
