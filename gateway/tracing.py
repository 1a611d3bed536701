"""A gateway call as an OpenTelemetry span, following the GenAI semantic conventions' inference span.

Built from the call's finished interaction row (gateway.call_log writes it, then hands it here), so the span and
the row carry the same numbers: its duration is the row's latency, ending when the row was completed; the
tokens, finish reason, response id, served version and time to first chunk are the row's. Only called with a
tracer: with tracing off no span is made.

Kind CLIENT, named `{gen_ai.operation.name} {gen_ai.request.model}` (`chat demo`, `text_completion demo`): the
conventions' span for a call to a model served elsewhere (here a vLLM server). Its parent is the request's HTTP
server span (FastAPI's, `http_telemetry`), so a request that never reaches a model (401, 404, 429) has that span
alone.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from opentelemetry.trace import SpanKind, Tracer

from core.tracing import Tracing, epoch_ns, record_span
from feedback.models import InteractionStatus

OPERATIONS = {"chat.completions": "chat", "completions": "text_completion"}
PROVIDER = "vllm"  # gen_ai.provider.name: what the gateway's upstreams are (a static upstream may be any OpenAI API)


def http_telemetry(tracing: Tracing | None) -> dict[str, Any]:
    """FastAPI's own OpenTelemetry (its `telemetry=`), tied to the settings rather than to its environment
    variables: with tracing on, an HTTP server span per request on our provider (the parent of the call's span;
    a client's `traceparent` header is honoured), without FastAPI's metrics, logs or per-operation spans; with
    tracing off, nothing at all, whatever global provider the process has."""
    if tracing is None:
        return {"tracing": False, "metrics": False, "logs": False, "auto_configure": False}
    return {"tracer_provider": tracing.provider, "metrics": False, "logs": False, "operation_spans": False,
            "auto_configure": False}


def trace_call(tracer: Tracer, row: dict[str, Any], error_type: str | None = None) -> None:
    """The span of one finished call (`row`: interaction_values of a row that is not `in_progress`).

    `error_type`: why it failed when the row's status does not say it precisely (the gateway's error code, or
    the store refusing the row)."""
    body = row.get("request_body") or {}
    operation = OPERATIONS.get(row["endpoint"], row["endpoint"])
    requested = body.get("model") or row["model_alias"]
    status = row["status"]
    if error_type is None and status != InteractionStatus.ok:
        error_type = str(status)  # upstream_error, client_disconnected
    finish = row.get("finish_reason")
    ttft_ms = row.get("ttft_ms")
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": PROVIDER,
        "gen_ai.request.model": requested,
        "gen_ai.request.stream": bool(row.get("stream")),
        "gen_ai.request.max_tokens": _number(body.get("max_completion_tokens", body.get("max_tokens")), int),
        "gen_ai.request.temperature": _number(body.get("temperature"), float),
        "gen_ai.request.top_p": _number(body.get("top_p"), float),
        "gen_ai.response.model": row["served_version"],  # the version that served it: x-tuneloop-version
        "gen_ai.response.id": row.get("response_id"),
        "gen_ai.response.finish_reasons": (finish,) if finish else None,
        "gen_ai.usage.input_tokens": row.get("prompt_tokens"),
        "gen_ai.usage.output_tokens": row.get("completion_tokens"),
        "gen_ai.response.time_to_first_chunk": ttft_ms / 1000 if ttft_ms is not None else None,  # seconds
        "http.response.status_code": row.get("http_status"),
        "error.type": error_type,
        "tuneloop.request_id": row["id"],  # x-request-id
        "tuneloop.status": str(status),
    }
    end = row["completed_at"]
    start = end - timedelta(milliseconds=row.get("latency_ms") or 0.0)
    record_span(tracer, f"{operation} {requested}", epoch_ns(start), epoch_ns(end), attributes,
                kind=SpanKind.CLIENT, error=(row.get("error") or error_type) if error_type else None)


def _number(value: Any, kind: type) -> Any:
    """A sampling field as the convention types it; JSON's true/false and other types are left out."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return kind(value)
