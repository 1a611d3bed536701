"""Idempotency-Key claims, as Stripe's API has them: a key belongs to one API key and one request.

The first request with a key claims it (a row in `idempotency_claims`, so every gateway process on the store sees
the claim); a duplicate that arrives while the first is being served is told so (409, "in progress") instead of
generating a second answer; once the answer is logged its interaction row holds the key and the request's
fingerprint, the claim is released, and a retry of the same request is answered from the row. The same key with
another body or on another endpoint is a mistake the client is told about; nothing is replayed or generated.
A claim whose holder died (kill -9 mid-answer) expires after `ttl_s` and can be taken over. Only a final `ok` row
holds the key: a stream's `in_progress` row (written before its first byte) never does, so a partial answer is
never replayed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any

import orjson
from sqlalchemy import Engine, delete, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from core.clock import utcnow
from feedback.models import IdempotencyClaim, Interaction

# A retry may switch between streamed and buffered delivery of the same answer: these fields are not the request.
DELIVERY_FIELDS = frozenset({"stream", "stream_options"})


def request_fingerprint(endpoint: str, body: dict[str, Any]) -> str:
    """SHA-256 over the endpoint and the body's canonical JSON (sorted keys), delivery fields left out."""
    content = {key: value for key, value in body.items() if key not in DELIVERY_FIELDS}
    digest = hashlib.sha256(endpoint.encode() + b"\x00")
    digest.update(orjson.dumps(content, option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()


class ClaimState(StrEnum):
    claimed = "claimed"  # this request owns the key: serve it, then release
    completed = "completed"  # answered before: replay `interaction`
    in_progress = "in_progress"  # another request with this key is being served now
    reused = "reused"  # the key was used with another request body or endpoint


@dataclass(frozen=True)
class ClaimResult:
    state: ClaimState
    interaction: Interaction | None = None


def claim_key(
    engine: Engine, api_key_id: str, key: str, fingerprint: str, request_id: str, ttl_s: float
) -> ClaimResult:
    """Decide what a request carrying `key` may do; claims the key when it may generate."""
    done = _completed(engine, api_key_id, key, fingerprint)
    if done is not None:
        return done
    now = utcnow()
    with Session(engine) as session:
        session.add(IdempotencyClaim(api_key_id=api_key_id, idempotency_key=key, fingerprint=fingerprint,
                                     request_id=request_id, expires_at=now + timedelta(seconds=ttl_s)))
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            held = session.get(IdempotencyClaim, (api_key_id, key))
            if held is None:  # released between our insert and this read: the answer is logged by now
                return _completed(engine, api_key_id, key, fingerprint) or ClaimResult(ClaimState.in_progress)
            if held.fingerprint != fingerprint:
                return ClaimResult(ClaimState.reused)
            taken = session.execute(
                update(IdempotencyClaim)
                .where(IdempotencyClaim.api_key_id == api_key_id, IdempotencyClaim.idempotency_key == key,
                       IdempotencyClaim.expires_at < now)
                .values(request_id=request_id, expires_at=now + timedelta(seconds=ttl_s))
            )
            session.commit()
            if taken.rowcount != 1:  # type: ignore[attr-defined]
                return ClaimResult(ClaimState.in_progress)
    # The holder may have logged its answer and released the claim between our lookup and our insert.
    done = _completed(engine, api_key_id, key, fingerprint)
    if done is not None:
        release_key(engine, api_key_id, key, request_id)
        return done
    return ClaimResult(ClaimState.claimed)


def release_key(engine: Engine, api_key_id: str, key: str, request_id: str) -> None:
    """Drop this request's claim (after its row is logged, or when it failed and a retry must generate)."""
    with Session(engine) as session:
        session.execute(delete(IdempotencyClaim).where(
            IdempotencyClaim.api_key_id == api_key_id, IdempotencyClaim.idempotency_key == key,
            IdempotencyClaim.request_id == request_id))
        session.commit()


def find_by_idempotency_key(engine: Engine, api_key_id: str, key: str) -> Interaction | None:
    with Session(engine, expire_on_commit=False) as session:
        statement = select(Interaction).where(
            Interaction.api_key_id == api_key_id, Interaction.idempotency_key == key
        )
        return session.exec(statement).first()


def _completed(engine: Engine, api_key_id: str, key: str, fingerprint: str) -> ClaimResult | None:
    row = find_by_idempotency_key(engine, api_key_id, key)
    if row is None:
        return None
    stored = row.idempotency_fingerprint or request_fingerprint(row.endpoint, row.request_body)  # rows before 0006
    if stored != fingerprint:
        return ClaimResult(ClaimState.reused)
    return ClaimResult(ClaimState.completed, row)
