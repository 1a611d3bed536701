"""What one proxied call leaves behind: its interaction row (built, then written), its request metrics, and its
span when tracing is on (built from the row).

Shared by the buffered path (gateway.proxy) and the stream relay (gateway.streaming).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any

from core.clock import utcnow
from feedback.interaction_log import DuplicateIdempotencyKey, RowRejected, StoreUnavailable, interaction_values
from feedback.models import InteractionStatus
from gateway.routing import Route
from gateway.serving import Call, Gateway
from gateway.tracing import trace_call

log = logging.getLogger("tuneloop.gateway")


def call_row(
    call: Call, route: Route, status: InteractionStatus, http_status: int, *, response_body=None, text=None,
    finish=None, usage=None, response_id=None, error=None, ttft=None, created_at: datetime | None = None,
) -> dict[str, Any]:
    """The call's row; an `in_progress` one (a stream's row written ahead) has no latency and no end yet."""
    usage = usage or {}
    done = status != InteractionStatus.in_progress
    return interaction_values(
        id=call.request_id,
        response_id=response_id,
        api_key_id=call.principal.key_id,
        model_alias=route.alias,
        served_version=route.version,
        endpoint=call.endpoint,
        stream=call.request.stream,
        end_user=call.request.user,
        request_body=call.body,
        response_body=response_body,
        response_text=text,
        finish_reason=finish,
        status=status,
        http_status=http_status,
        error=error,
        latency_ms=(time.perf_counter() - call.started) * 1000 if done else None,
        ttft_ms=ttft * 1000 if ttft is not None else None,
        prompt_tokens=usage.get("prompt_tokens"),
        completion_tokens=usage.get("completion_tokens"),
        total_tokens=usage.get("total_tokens"),
        # only a served answer keeps the key: a retry after a failure must be tried again, not replayed
        idempotency_key=call.idempotency_key if status == InteractionStatus.ok and call.fingerprint else None,
        idempotency_fingerprint=call.fingerprint if status == InteractionStatus.ok else None,
        created_at=created_at or utcnow(),
        completed_at=utcnow() if done else None,
    )


async def write_row(
    gw: Gateway, row: dict[str, Any], *, replace: bool = False, error_type: str | None = None
) -> None:
    """Log a finished call's row; a key taken over meanwhile (its claim had expired) must not cost the row itself.

    With tracing on, the call's span is made from the same row (gateway.tracing), with `error_type` (the gateway's
    error code) when the call failed, or the store's refusal when the row was refused; off, nothing more is done."""
    try:
        try:
            await gw.interaction_log.write(row, replace=replace)
        except DuplicateIdempotencyKey:
            log.warning("interaction %s: Idempotency-Key already answered by another request; logged without it",
                        row["id"])
            await gw.interaction_log.write(dict(row, idempotency_key=None, idempotency_fingerprint=None),
                                           replace=replace)
    except (StoreUnavailable, RowRejected) as exc:
        if gw.tracer is not None:
            trace_call(gw.tracer, row, error_type or ("row_rejected" if isinstance(exc, RowRejected)
                                                      else "store_unavailable"))
        raise
    if gw.tracer is not None:
        trace_call(gw.tracer, row, error_type)


def count_call(gw: Gateway, call: Call, route: Route, status: int) -> None:
    gw.metrics.requests.labels(call.endpoint, route.version, str(status)).inc()
    gw.metrics.latency.labels(call.endpoint).observe(time.perf_counter() - call.started)
