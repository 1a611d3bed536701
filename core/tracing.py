"""OpenTelemetry traces: a process's tracer, exported over OTLP/HTTP, and spans built from what was recorded.

Off unless the composition root starts it (`TUNELOOP_OTEL_ENDPOINT`): library code is handed a `Tracer` or
None and creates no span at all when it has None (a test checks that nothing is even started), so tracing off
costs one `is None` check where a span would be made. The SDK and the exporter are imported only when tracing
starts.

Spans are built once the work they describe is finished and recorded (a gateway call's interaction row, a
cycle's run and step rows), with that record's own timestamps: a span and the row or metric beside it carry
the same numbers. The OTLP exporter sends in batches from a thread of its own; `Tracing.shutdown` flushes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.trace import Span, SpanKind, Tracer

TRACER_NAME = "tuneloop"
TRACES_PATH = "/v1/traces"  # OTLP/HTTP's traces path, added to an endpoint given without one
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
EXPORT_TIMEOUT_S = 5.0  # one export's limit: a collector that is down must not hold a stopping process long


@dataclass(frozen=True)
class Tracing:
    """A process's tracer and its provider (which a framework's own spans may share, as the gateway's HTTP
    server spans do); `shutdown` flushes and stops its exporter when the process stops."""

    tracer: Tracer
    provider: TracerProvider

    def shutdown(self) -> None:
        self.provider.shutdown()


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL: `http://collector:4318` becomes `http://collector:4318/v1/traces`; an endpoint
    with a path is used as it is."""
    return endpoint.rstrip("/") + TRACES_PATH if urlsplit(endpoint).path in ("", "/") else endpoint


def start_tracing(endpoint: str, service_name: str, sample_ratio: float = 1.0) -> Tracing | None:
    """Spans of this process exported to `endpoint` (OTLP over HTTP, batched); None when `endpoint` is empty.
    `sample_ratio`: the share of traces kept (by trace id; a request's spans are kept or dropped together)."""
    if not endpoint:
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporter = OTLPSpanExporter(endpoint=traces_url(endpoint), timeout=EXPORT_TIMEOUT_S)
    return tracing_with(BatchSpanProcessor(exporter), service_name, sample_ratio)


def tracing_with(processor: SpanProcessor, service_name: str, sample_ratio: float = 1.0) -> Tracing:
    """A tracer whose spans go to `processor` (the OTLP batch above; tests hand an in-memory exporter's).

    Sampling by trace id, parent first (a client's sampled `traceparent` is kept): on 2 cores a traced call
    cost ~310 µs more gateway CPU than an untraced one (benchmarks/gateway), so a busy gateway keeps a share."""
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    # Not installed as the global provider: the tracer is handed to the code that uses it, like the engine.
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}), shutdown_on_exit=False,
                              sampler=ParentBased(TraceIdRatioBased(sample_ratio)))
    provider.add_span_processor(processor)
    return Tracing(provider.get_tracer(TRACER_NAME), provider)


def epoch_ns(moment: datetime) -> int:
    """An aware datetime as the nanoseconds since the epoch that span timestamps are."""
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1_000


def record_span(
    tracer: Tracer, name: str, start_ns: int, end_ns: int, attributes: Mapping[str, Any], *,
    kind: SpanKind | None = None, parent: Span | None = None, error: str | None = None,
) -> None:
    """A finished span from recorded times; `error`: it failed (status ERROR, with that description)."""
    span = open_span(tracer, name, start_ns, attributes, kind=kind, parent=parent)
    close_span(span, end_ns, error)


def open_span(
    tracer: Tracer, name: str, start_ns: int, attributes: Mapping[str, Any], *,
    kind: SpanKind | None = None, parent: Span | None = None,
) -> Span:
    """A span begun at a recorded time (a parent whose children are recorded before it ends)."""
    from opentelemetry import trace

    context = trace.set_span_in_context(parent) if parent is not None else None
    return tracer.start_span(name, context=context, kind=kind or trace.SpanKind.INTERNAL,
                             attributes={k: v for k, v in attributes.items() if v is not None},
                             start_time=start_ns)


def close_span(span: Span, end_ns: int, error: str | None = None) -> None:
    if error is not None:
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, error))
    span.end(end_time=end_ns)
