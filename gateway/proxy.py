"""Proxying one completion to its upstream and logging it: the logic behind the thin OpenAI routes.

Durability rule: a non-streamed answer leaves only after its row is committed (else 503); a streamed answer
starts only while the log writer is healthy, and no byte of it leaves before its `in_progress` row is committed
(gateway.streaming).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from fastapi.responses import Response

from feedback.interaction_log import RowRejected, StoreUnavailable
from feedback.models import InteractionStatus
from gateway.auth import Principal
from gateway.call_log import call_row, count_call, write_row
from gateway.errors import (
    GatewayError,
    bad_gateway,
    gateway_timeout,
    not_found,
    row_rejected,
    store_unavailable,
)
from gateway.idempotent import claim_idempotency_key, release_claim
from gateway.protocol import SamplingFields
from gateway.ratelimit import usage_tokens
from gateway.routing import Route
from gateway.serving import Call, Gateway
from gateway.sse import answer_text
from gateway.streaming import LoggedStreamingResponse, logged_stream
from gateway.upstream import ConnectError, UpstreamError, UpstreamResponse

log = logging.getLogger("tuneloop.gateway")

UPSTREAM_PATHS = {"chat.completions": "/v1/chat/completions", "completions": "/v1/completions"}


async def handle_completion(
    gw: Gateway, endpoint: str, principal: Principal, request: SamplingFields, body: dict[str, Any],
    request_id: str, idempotency_key: str | None,
) -> Response:
    limit_headers = await gw.limiter.admit(principal)  # 429 past the key's rpm/tpm; else its x-ratelimit-*
    call = Call(endpoint, principal, request, body, request_id, idempotency_key, time.perf_counter())
    if idempotency_key is not None:
        replayed = await claim_idempotency_key(gw, call)
        if replayed is not None:
            return with_headers(replayed, limit_headers)
    try:
        response = await _serve(gw, call)
    except BaseException:
        await release_claim(gw, call)  # a failed request is not answered: its retry must generate
        raise
    if not isinstance(response, LoggedStreamingResponse):
        await release_claim(gw, call)  # a stream releases its claim once its row is logged
    return with_headers(response, limit_headers)


def with_headers(response: Response, headers: dict[str, str]) -> Response:
    """Add headers the response does not have yet (appended raw: MutableHeaders.update rescans per header)."""
    if headers:
        response.raw_headers.extend((name.encode("latin-1"), value.encode("latin-1"))
                                    for name, value in headers.items())
    return response


async def _serve(gw: Gateway, call: Call) -> Response:
    request = call.request
    route = await gw.router.resolve(request.model, request.user)
    if route is None:
        raise not_found(f"The model '{request.model}' does not exist.", param="model", code="model_not_found")
    try:
        return await _serve_route(gw, call, route)
    except GatewayError as error:
        error.headers.setdefault("x-tuneloop-version", route.version)
        raise


async def _serve_route(gw: Gateway, call: Call, route: Route) -> Response:
    request, body, endpoint, request_id = call.request, call.body, call.endpoint, call.request_id
    if request.stream:
        try:
            await gw.interaction_log.ensure_available()
        except StoreUnavailable:
            raise store_unavailable() from None

    upstream_body = dict(body, model=route.served_name)
    strip_usage = False
    if request.stream and not (request.stream_options and request.stream_options.include_usage):
        upstream_body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        strip_usage = True
    try:
        upstream = await open_upstream(gw, route, UPSTREAM_PATHS[endpoint], upstream_body, request_id)
    except GatewayError as error:
        await _log_failure(gw, call, route, error)
        raise
    headers = {"x-request-id": request_id, "x-tuneloop-version": route.version}
    if upstream.status_code >= 400 or not request.stream:
        return await _finish_buffered(gw, call, route, upstream, headers)
    return logged_stream(gw, call, route, upstream, strip_usage, headers)


async def open_upstream(
    gw: Gateway, route: Route, path: str, body: dict[str, Any], request_id: str
) -> UpstreamResponse:
    """Send to a replica and wait for its response headers; a refused connection moves to the next one."""
    timeouts = gw.settings.timeouts
    content = orjson.dumps(body)
    replicas = gw.picker.order(route.base_urls)
    attempts = replicas if len(replicas) > 1 else replicas * 2  # one retry, on another replica when there is one
    last_error: Exception | None = None
    headers = {"content-type": "application/json", "x-request-id": request_id}
    for base_url in attempts[:2]:
        try:
            async with asyncio.timeout(timeouts.connect + timeouts.first_byte):
                return await gw.client.post(base_url + path, content, headers)
        except ConnectError as exc:
            gw.metrics.upstream_errors.labels("connect").inc()
            last_error = exc
            continue
        except TimeoutError:
            gw.metrics.upstream_errors.labels("timeout").inc()
            raise gateway_timeout(f"The upstream for '{route.alias}' sent no response in time.") from None
        except UpstreamError as exc:
            gw.metrics.upstream_errors.labels("protocol").inc()
            raise bad_gateway(f"The upstream for '{route.alias}' failed: {type(exc).__name__}.") from None
    raise bad_gateway(
        f"No upstream replica for '{route.alias}' accepted the connection ({type(last_error).__name__}).",
        code="upstream_unavailable",
    )


async def _finish_buffered(
    gw: Gateway, call: Call, route: Route, upstream: UpstreamResponse, headers: dict[str, str]
) -> Response:
    try:
        async with asyncio.timeout(gw.settings.timeouts.total):
            raw = await upstream.aread()
    except TimeoutError:
        gw.metrics.upstream_errors.labels("timeout").inc()
        error = gateway_timeout(f"The upstream for '{route.alias}' did not finish in time.")
        await _log_failure(gw, call, route, error)
        raise error from None
    except UpstreamError as exc:
        gw.metrics.upstream_errors.labels("read").inc()
        error = bad_gateway(f"The upstream for '{route.alias}' broke off its answer: {type(exc).__name__}.")
        await _log_failure(gw, call, route, error)
        raise error from None
    finally:
        await upstream.aclose()
    if upstream.status_code >= 400:
        error = _upstream_status_error(upstream.status_code, raw, route)
        await _log_failure(gw, call, route, error)
        raise error
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        error = bad_gateway(f"The upstream for '{route.alias}' answered with invalid JSON.")
        await _log_failure(gw, call, route, error)
        raise error from None
    text, finish = answer_text(parsed)
    row = call_row(call, route, InteractionStatus.ok, 200, response_body=parsed, text=text, finish=finish,
               usage=parsed.get("usage"), response_id=parsed.get("id"))
    try:
        await write_row(gw, row)
    except StoreUnavailable:
        raise store_unavailable() from None
    except RowRejected as exc:
        raise row_rejected(str(exc)) from None
    count_call(gw, call, route, 200)
    await gw.limiter.add_tokens(call.principal, usage_tokens(parsed.get("usage")))
    return Response(raw, media_type="application/json", headers=headers)


def _upstream_status_error(status: int, raw: bytes, route: Route) -> GatewayError:
    """4xx from the upstream is the caller's mistake: pass it on; 5xx becomes 502."""
    message = f"The upstream for '{route.alias}' answered {status}."
    param = None
    try:
        detail = orjson.loads(raw).get("error") or {}
        message = detail.get("message") or message
        param = detail.get("param")
    except (orjson.JSONDecodeError, AttributeError):
        pass
    if 400 <= status < 500:
        return GatewayError(status if status != 422 else 400, message, param=param, code="upstream_rejected")
    return bad_gateway(f"The upstream for '{route.alias}' failed with {status}: {message}"[:2000])


async def _log_failure(gw: Gateway, call: Call, route: Route, error: GatewayError) -> None:
    """Failed calls are logged too (curation counts them); a store outage must not mask the upstream error."""
    row = call_row(call, route, InteractionStatus.upstream_error, error.status, error=error.detail.message)
    count_call(gw, call, route, error.status)
    try:
        await write_row(gw, row, error_type=error.detail.code or error.detail.type)
    except (StoreUnavailable, RowRejected) as exc:
        log.error("failed interaction %s not logged: %s", call.request_id, exc)
