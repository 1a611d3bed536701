"""Streamed answers: relayed event by event, and logged ahead of their first byte.

Durability rule for a stream: before any byte of it reaches the client, its status line included, a row with
status `in_progress` is committed. That write starts as soon as the upstream accepted the stream and runs while
the upstream computes its first token, so in the normal case it adds nothing to the time to first chunk (a group
commit is far shorter than a model's first token). The status line waits for the first event; so when the row
cannot be written the client gets the 503 (or, for a row the store refuses, the 400) it would get before any
stream, and nothing is served unlogged. When the stream ends, however it ends, its final row replaces that one
(same id, an upsert through the log writer), shielded from cancellation, with the partial text when the client
left; a stream that runs to its end sends `[DONE]` only after that, so a client that saw `[DONE]` finds its
answer logged (its feedback can name the response id of the chunks at once).

A gateway process that dies mid-stream (kill -9, OOM) leaves its row `in_progress` for good: the client saw part
of an answer, the row holds the request without the text. Nothing rewrites such rows yet. They stay out of
training (curation selects only `ok` rows) and out of Idempotency-Key replays (only a final `ok` row holds the
key; the claim expires and a retry generates anew).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

import anyio
from fastapi.responses import StreamingResponse
from starlette.types import Send

from feedback.interaction_log import RowRejected, StoreUnavailable
from feedback.models import InteractionStatus
from gateway.call_log import call_row, count_call, write_row
from gateway.errors import GatewayError, error_response, row_rejected, sse_error_event, store_unavailable
from gateway.idempotent import release_claim
from gateway.protocol import ErrorDetail
from gateway.ratelimit import usage_tokens
from gateway.routing import Route
from gateway.serving import Call, Gateway
from gateway.sse import DONE, StreamAccumulator
from gateway.upstream import UpstreamError, UpstreamResponse

log = logging.getLogger("tuneloop.gateway")


def logged_stream(
    gw: Gateway, call: Call, route: Route, upstream: UpstreamResponse, strip_usage: bool, headers: dict[str, str]
) -> LoggedStreamingResponse:
    """The response relaying `upstream`; its `in_progress` row is being written from now on."""
    ahead_row = call_row(call, route, InteractionStatus.in_progress, 200)
    ahead = asyncio.create_task(_write_ahead(gw, ahead_row), name=f"ahead-{call.request_id}")
    created_at = ahead_row["created_at"]  # the final row keeps it: the interaction began when the stream did
    return LoggedStreamingResponse(
        _relay_stream(gw, call, route, upstream, strip_usage, ahead, created_at),
        on_never_started=lambda: _abandon_stream(gw, call, route, upstream, ahead, created_at),
        media_type="text/event-stream", headers=headers,
    )


async def _write_ahead(gw: Gateway, row: dict[str, Any]) -> None:
    try:
        await gw.interaction_log.write(row)
    except StoreUnavailable:
        raise store_unavailable() from None
    except RowRejected as exc:
        raise row_rejected(str(exc)) from None


def _refused(ahead: asyncio.Task[None]) -> bool:
    return ahead.cancelled() or ahead.exception() is not None


async def _relay_stream(
    gw: Gateway, call: Call, route: Route, upstream: UpstreamResponse, strip_usage: bool,
    ahead: asyncio.Task[None], created_at: datetime,
) -> AsyncIterator[bytes]:
    timeouts = gw.settings.timeouts
    deadline = call.started + timeouts.total
    accumulator = StreamAccumulator(strip_usage_only_chunks=strip_usage)
    status, error, code, ttft = InteractionStatus.client_disconnected, None, "upstream_error", None
    logged = False
    chunks = upstream.aiter_raw()
    try:
        await asyncio.shield(ahead)  # no byte before the row; its GatewayError becomes the response
        try:
            while True:
                remaining = deadline - time.perf_counter()
                try:
                    async with asyncio.timeout(max(0.0, min(timeouts.chunk_gap, remaining))):
                        chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
                for event in accumulator.feed(chunk):
                    if ttft is None and accumulator.content_events:
                        ttft = time.perf_counter() - call.started
                    yield event
            status = InteractionStatus.ok
            if not accumulator.saw_done:
                status, error = InteractionStatus.upstream_error, "upstream stream ended without [DONE]"
        except TimeoutError:
            gw.metrics.upstream_errors.labels("timeout").inc()
            status, error = InteractionStatus.upstream_error, "upstream stream stalled past the chunk-gap timeout"
            code = "upstream_timeout"
        except UpstreamError as exc:
            gw.metrics.upstream_errors.labels("read").inc()
            status, error = InteractionStatus.upstream_error, f"upstream broke off the stream: {type(exc).__name__}"
        if error is not None:
            yield sse_error_event(ErrorDetail(message=error, type="api_error", code=code))
        # the final row before the client hears the end: a client that saw [DONE] finds its answer logged
        with anyio.CancelScope(shield=True):
            await upstream.aclose()
            await _log_final(gw, call, route, status, error, accumulator, ttft, created_at)
        logged = True
        yield DONE
    finally:
        with anyio.CancelScope(shield=True):
            await upstream.aclose()  # a departed client cancels the upstream generation too
            await asyncio.wait([ahead])  # the final row must be queued after the ahead row, never before
            refused = _refused(ahead)  # then nothing was served, as when a stream is refused before it starts
            if not refused and not logged:
                await _log_final(gw, call, route, status, error, accumulator, ttft, created_at)
            await release_claim(gw, call)
            count_call(gw, call, route, 503 if refused else 200 if status == InteractionStatus.ok else 599)
            if not refused:
                if ttft is not None:
                    gw.metrics.ttft.labels(call.endpoint).observe(ttft)
                await gw.limiter.add_tokens(call.principal, usage_tokens(accumulator.usage))


async def _log_final(
    gw: Gateway, call: Call, route: Route, status: InteractionStatus, error: str | None,
    accumulator: StreamAccumulator, ttft: float | None, created_at: datetime,
) -> None:
    """Replace the stream's in_progress row with what was answered (the partial text when the client left)."""
    row = call_row(call, route, status, 200, text=accumulator.text, finish=accumulator.finish_reason,
                   usage=accumulator.usage, response_id=accumulator.response_id, error=error, ttft=ttft,
                   created_at=created_at)
    try:
        await write_row(gw, row, replace=True)
    except (StoreUnavailable, RowRejected) as exc:  # its in_progress row stays: the answer began
        log.error("streamed interaction %s: final row not logged: %s", call.request_id, exc)


class LoggedStreamingResponse(StreamingResponse):
    """Sends its status line with the relay's first event, so a relay that refuses before it (raising a
    GatewayError) still leaves as that error; closes the relay as soon as the response ends, so its log row is
    written now, not at GC; a client that left before the first chunk was even asked for still gets its upstream
    cancelled and its row written."""

    def __init__(self, relay: AsyncIterator[bytes], on_never_started: Callable[[], Awaitable[None]],
                 **kwargs: Any) -> None:
        self._relay = relay
        self._started = False
        self._on_never_started = on_never_started
        super().__init__(relay, **kwargs)

    async def stream_response(self, send: Send) -> None:
        await anyio.lowlevel.checkpoint()  # a client already gone cancels us here, before the upstream is read
        self._started = True
        try:
            first = await anext(self._relay)
        except StopAsyncIteration:
            first = b""
        except GatewayError as error:
            await self._send_refusal(send, error)
            return
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        if first:
            await send({"type": "http.response.body", "body": first, "more_body": True})
        async for chunk in self._relay:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _send_refusal(self, send: Send, error: GatewayError) -> None:
        refusal = error_response(error)
        own = {name for name, _ in refusal.raw_headers}
        kept = [(name, value) for name, value in self.raw_headers  # x-request-id, x-tuneloop-version, limits
                if name not in own and name not in (b"content-type", b"content-length")]
        await send({"type": "http.response.start", "status": refusal.status_code,
                    "headers": refusal.raw_headers + kept})
        await send({"type": "http.response.body", "body": refusal.body})

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                if self._started:
                    await self._relay.aclose()  # type: ignore[attr-defined]
                else:  # an unstarted generator's finally never runs: do its work here
                    await self._on_never_started()


async def _abandon_stream(
    gw: Gateway, call: Call, route: Route, upstream: UpstreamResponse, ahead: asyncio.Task[None],
    created_at: datetime,
) -> None:
    await upstream.aclose()
    await asyncio.wait([ahead])  # the final row must be queued after the ahead row, never before
    if _refused(ahead):  # the final row is still tried: the upsert does not need the ahead row
        log.warning("abandoned stream %s: its in_progress row was not written", call.request_id)
    row = call_row(call, route, InteractionStatus.client_disconnected, 200, text="", created_at=created_at)
    try:
        await write_row(gw, row, replace=True)
    except (StoreUnavailable, RowRejected) as exc:
        log.error("abandoned stream %s not logged: %s", call.request_id, exc)
    await release_claim(gw, call)
