"""Idempotency-Key handling for the completion routes: claim before serving, replay what was answered, release
after the row is logged. The rules (and the claim row shared by every gateway process) are in
feedback.idempotency; this is the gateway's side of them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import anyio
import orjson
from fastapi.responses import Response, StreamingResponse
from sqlalchemy.exc import SQLAlchemyError

from feedback.idempotency import ClaimState, claim_key, release_key, request_fingerprint
from feedback.models import Interaction
from gateway.errors import idempotency_in_progress, idempotency_key_reused, store_unavailable
from gateway.sse import assembled_completion, replay_events

if TYPE_CHECKING:
    from gateway.serving import Call, Gateway

log = logging.getLogger("tuneloop.gateway")

# An Idempotency-Key claim outlives the longest answer by this much before another request may take it over.
CLAIM_GRACE_S = 30.0


async def claim_idempotency_key(gw: Gateway, call: Call) -> Response | None:
    """A replay of the stored answer, or None once this request holds the key; refusals raise."""
    fingerprint = request_fingerprint(call.endpoint, call.body)
    try:
        result = await asyncio.to_thread(
            claim_key, gw.engine, call.principal.key_id, call.idempotency_key or "", fingerprint, call.request_id,
            gw.settings.timeouts.total + CLAIM_GRACE_S)
    except SQLAlchemyError:
        raise store_unavailable() from None
    if result.state == ClaimState.completed and result.interaction is not None:
        return replay(result.interaction, call.request.stream)
    if result.state == ClaimState.reused:
        raise idempotency_key_reused()
    if result.state == ClaimState.in_progress:
        raise idempotency_in_progress()
    call.fingerprint = fingerprint
    return None


async def release_claim(gw: Gateway, call: Call) -> None:
    if call.fingerprint is None:
        return
    with anyio.CancelScope(shield=True):
        try:
            await asyncio.to_thread(release_key, gw.engine, call.principal.key_id, call.idempotency_key or "",
                                    call.request_id)
        except SQLAlchemyError as exc:  # the claim expires on its own; until then retries hear "in progress"
            log.warning("idempotency claim of %s not released: %s", call.request_id, exc)
    call.fingerprint = None


def replay(previous: Interaction, stream: bool) -> Response:
    """Answer an Idempotency-Key retry from the stored row, in the delivery the retry asks for: a stream as SSE;
    a streamed answer asked for without streaming as the whole object, assembled from the stored text.
    x-request-id is the original request's: feedback on the replay rates the one logged answer."""
    headers = {"x-request-id": previous.id, "x-tuneloop-version": previous.served_version,
               "x-tuneloop-idempotent-replay": "true"}
    chat = previous.endpoint == "chat.completions"
    if stream:
        events = replay_events(previous.response_id or previous.id, previous.served_version,
                               previous.response_text or "", previous.finish_reason, chat=chat)
        return StreamingResponse(iter(events), media_type="text/event-stream", headers=headers)
    body = previous.response_body or assembled_completion(previous, chat=chat)
    return Response(orjson.dumps(body), media_type="application/json", headers=headers)
