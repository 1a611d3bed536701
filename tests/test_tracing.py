"""OpenTelemetry traces: a gateway call is a GenAI span carrying what the client saw and what its row logged, a
cycle is a span per step, and with tracing off not one span is started."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from sqlmodel import Session, select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as StarletteRoute

from core.api_keys import Scope, create_key
from core.db import make_engine
from core.settings import Settings, SettingsError, load_settings
from core.tracing import Tracing, epoch_ns, record_span, start_tracing, traces_url, tracing_with
from deploy.cycle import CycleContext, SkipCycle, Step, run_cycle
from deploy.cycle_runs import get_run
from deploy.scheduler import run_cycle_now
from feedback.models import Interaction
from gateway.app import create_app
from gateway.routing import Route
from registry.reference_judge import ReferenceJudge
from registry.store import register_base
from tests.fake_upstream import UpstreamState, make_fake_upstream
from tests.servers import serve
from tuneloop.compose import job_context

MESSAGES = [{"role": "user", "content": "hello"}]


@dataclass
class AliasRouter:
    """The registry's shape of a route: the client asks for an alias, a version with its own name serves it."""

    upstream: str

    async def resolve(self, model: str, user: str | None) -> Route | None:
        served = {"demo": "demo-v7", "broken": "error500-v1"}.get(model)
        return Route(alias=model, version=served, served_name=served, base_urls=(self.upstream,)) if served else None

    async def model_names(self) -> list[str]:
        return ["broken", "demo"]


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with serve(make_fake_upstream(UpstreamState())) as url:
        yield url


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@contextlib.contextmanager
def gateway(sqlite_url: str, home: Path, upstream: str, tracing: Tracing | None) -> Iterator[openai.OpenAI]:
    _public, key = create_key(make_engine(sqlite_url), Scope.app, "traced-app")
    app = create_app(Settings(home=home, database_url=sqlite_url), router=AliasRouter(upstream), tracing=tracing)
    with serve(app) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=30)


def _row(sqlite_url: str, request_id: str) -> Interaction:
    with Session(make_engine(sqlite_url)) as session:
        return session.exec(select(Interaction).where(Interaction.id == request_id)).one()


def _genai(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if (s.attributes or {}).get("gen_ai.operation.name")]


def test_a_chat_is_a_genai_span_with_what_the_client_saw(sqlite_url, tmp_path, upstream, exporter):
    tracing = tracing_with(SimpleSpanProcessor(exporter), "tuneloop-gateway")
    with gateway(sqlite_url, tmp_path, upstream, tracing) as client:
        raw = client.chat.completions.with_raw_response.create(model="demo", messages=MESSAGES, max_tokens=16,
                                                               temperature=0.3)
        completion = raw.parse()
    [span] = _genai(exporter)
    attributes = dict(span.attributes)
    assert span.name == "chat demo" and span.kind == SpanKind.CLIENT
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "demo"
    assert attributes["gen_ai.response.model"] == raw.headers["x-tuneloop-version"] == completion.model == "demo-v7"
    assert attributes["gen_ai.response.id"] == completion.id
    assert attributes["gen_ai.usage.input_tokens"] == completion.usage.prompt_tokens == 5
    assert attributes["gen_ai.usage.output_tokens"] == completion.usage.completion_tokens == 3
    assert attributes["gen_ai.response.finish_reasons"] == (completion.choices[0].finish_reason,) == ("stop",)
    assert attributes["gen_ai.request.max_tokens"] == 16 and attributes["gen_ai.request.temperature"] == 0.3
    assert attributes["gen_ai.request.stream"] is False
    assert attributes["tuneloop.request_id"] == raw.headers["x-request-id"]
    assert attributes["http.response.status_code"] == 200
    assert "error.type" not in attributes and "gen_ai.response.time_to_first_chunk" not in attributes
    assert span.status.status_code == StatusCode.UNSET
    # one source of truth: the span is the logged row's interval
    row = _row(sqlite_url, raw.headers["x-request-id"])
    assert span.end_time == epoch_ns(row.completed_at)
    assert abs((span.end_time - span.start_time) - row.latency_ms * 1e6) < 2_000
    # its parent is the request's HTTP server span, on the same provider
    [server] = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert server.name == "POST /v1/chat/completions"
    assert span.parent is not None and span.parent.span_id == server.context.span_id
    assert span.resource.attributes["service.name"] == "tuneloop-gateway"


def test_a_stream_is_a_genai_span_with_its_time_to_first_chunk(sqlite_url, tmp_path, upstream, exporter):
    tracing = tracing_with(SimpleSpanProcessor(exporter), "tuneloop-gateway")
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    with gateway(sqlite_url, tmp_path, upstream, tracing) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="demo", messages=MESSAGES, stream=True, stream_options={"include_usage": True},
            extra_headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
        chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    usage = next(c.usage for c in chunks if c.usage is not None)
    assert text == "w0 w1 w2 w3 w4 "
    [span] = _genai(exporter)
    attributes = dict(span.attributes)
    assert span.name == "chat demo"
    assert attributes["gen_ai.request.stream"] is True
    assert attributes["gen_ai.response.model"] == raw.headers["x-tuneloop-version"] == chunks[0].model
    assert attributes["gen_ai.response.id"] == chunks[0].id
    assert attributes["gen_ai.usage.input_tokens"] == usage.prompt_tokens
    assert attributes["gen_ai.usage.output_tokens"] == usage.completion_tokens == 5
    assert attributes["gen_ai.response.finish_reasons"] == tuple(finish) == ("stop",)
    assert attributes["tuneloop.request_id"] == raw.headers["x-request-id"]
    row = _row(sqlite_url, raw.headers["x-request-id"])
    ttft = attributes["gen_ai.response.time_to_first_chunk"]
    assert ttft > 0 and ttft == pytest.approx(row.ttft_ms / 1000)
    assert ttft * 1e9 < span.end_time - span.start_time
    assert format(span.context.trace_id, "032x") == trace_id  # the client's trace goes on through the gateway


def test_a_failed_call_is_an_error_span(sqlite_url, tmp_path, upstream, exporter):
    tracing = tracing_with(SimpleSpanProcessor(exporter), "tuneloop-gateway")
    with gateway(sqlite_url, tmp_path, upstream, tracing) as client, \
            pytest.raises(openai.InternalServerError) as failed:
        client.chat.completions.create(model="broken", messages=MESSAGES)
    [span] = _genai(exporter)
    attributes = dict(span.attributes)
    assert failed.value.status_code == 502
    assert attributes["http.response.status_code"] == 502 and attributes["error.type"] == "upstream_error"
    assert attributes["gen_ai.response.model"] == failed.value.response.headers["x-tuneloop-version"]
    assert attributes["tuneloop.request_id"] == failed.value.response.headers["x-request-id"]
    assert span.status.status_code == StatusCode.ERROR and "engine crashed" in span.status.description


def test_tracing_off_starts_no_span(sqlite_url, tmp_path, upstream, exporter, monkeypatch):
    """Off, nothing is started: not our spans, not FastAPI's own, even with a global SDK provider installed."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    started: list[str] = []
    for tracer_class in (SdkTracer, trace.NoOpTracer):
        original = tracer_class.start_span

        def counting(self, name, *args, _original=original, **kwargs):  # type: ignore[no-untyped-def]
            started.append(name)
            return _original(self, name, *args, **kwargs)

        monkeypatch.setattr(tracer_class, "start_span", counting)
    with gateway(sqlite_url, tmp_path, upstream, None) as client:
        client.chat.completions.create(model="demo", messages=MESSAGES)
        list(client.chat.completions.create(model="demo", messages=MESSAGES, stream=True))
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="nothing", messages=MESSAGES)
    run_cycle(make_engine(sqlite_url), "demo", [Step("curate", lambda c: {"n_train": 40})])
    assert started == [] and exporter.get_finished_spans() == ()


def test_a_cycle_is_a_span_per_step_with_the_recorded_times(sqlite_url, exporter):
    tracing = tracing_with(SimpleSpanProcessor(exporter), "tuneloop-worker")
    engine = make_engine(sqlite_url)

    def boom(ctx: CycleContext) -> dict:
        raise RuntimeError("out of memory")

    failed = run_cycle(engine, "demo", [Step("curate", lambda c: {"n_train": 40}), Step("train", boom)],
                       trigger="schedule", tracer=tracing.tracer)
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert set(spans) == {"cycle demo", "cycle_step curate", "cycle_step train"}
    cycle, curate, train = spans["cycle demo"], spans["cycle_step curate"], spans["cycle_step train"]
    assert cycle.parent is None and curate.parent.span_id == train.parent.span_id == cycle.context.span_id
    assert dict(cycle.attributes).items() >= {"tuneloop.alias": "demo", "tuneloop.cycle.id": failed.id,
                                              "tuneloop.cycle.trigger": "schedule", "tuneloop.cycle.status": "failed",
                                              "error.type": "RuntimeError"}.items()
    assert cycle.status.status_code == StatusCode.ERROR and "out of memory" in cycle.status.description
    run = get_run(engine, failed.id)
    for step, span in zip(run.steps, (curate, train), strict=True):
        assert span.attributes["tuneloop.cycle.step"] == step.name
        assert span.attributes["tuneloop.cycle.id"] == run.id and span.attributes["tuneloop.alias"] == "demo"
        assert span.attributes["tuneloop.cycle.step.outcome"] == str(step.status)
        assert (span.start_time, span.end_time) == (epoch_ns(step.started_at), epoch_ns(step.finished_at))
        assert span.attributes["tuneloop.cycle.step.duration_s"] == pytest.approx(
            (step.finished_at - step.started_at).total_seconds())  # what the worker's step metric observes
    assert curate.attributes["tuneloop.cycle.step.outcome"] == "succeeded" and "error.type" not in curate.attributes
    assert train.attributes["error.type"] == "RuntimeError" and train.status.status_code == StatusCode.ERROR

    exporter.clear()

    def too_small(ctx: CycleContext) -> dict:
        raise SkipCycle("only 3 new examples (minimum 20)")

    run_cycle(engine, "demo", [Step("curate", too_small)], tracer=tracing.tracer)
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert spans["cycle demo"].attributes["tuneloop.cycle.status"] == "skipped"
    assert spans["cycle_step curate"].attributes["tuneloop.cycle.step.reason"] == "only 3 new examples (minimum 20)"
    assert spans["cycle_step curate"].status.status_code == StatusCode.UNSET


def test_the_worker_jobs_trace_with_the_tracer_their_process_built(sqlite_url, tmp_path, demo_model_dir, exporter):
    tracing = tracing_with(SimpleSpanProcessor(exporter), "tuneloop-worker")
    register_base(make_engine(sqlite_url), "demo", str(demo_model_dir))
    settings = Settings(home=tmp_path, database_url=sqlite_url, base_model=str(demo_model_dir))
    context = job_context(settings, judge=ReferenceJudge(), tracer=tracing.tracer)
    outcome = run_cycle_now(context, "demo", trigger="schedule")
    assert outcome["status"] == "skipped"
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert set(spans) == {"cycle demo", "cycle_step curate"}
    assert spans["cycle demo"].attributes["tuneloop.cycle.id"] == outcome["id"]
    assert spans["cycle demo"].attributes["tuneloop.cycle.reason"] == outcome["reason"]
    assert spans["cycle_step curate"].attributes["tuneloop.cycle.step.outcome"] == "skipped"


def test_spans_leave_over_otlp_http_and_are_flushed_at_shutdown():
    """The real exporter against a stand-in collector: one protobuf POST to /v1/traces, sent by `shutdown`."""
    received: list[tuple[str, str, bytes]] = []

    async def collect(request: Request) -> Response:
        received.append((request.url.path, request.headers["content-type"], await request.body()))
        return Response(b"", media_type="application/x-protobuf")

    with serve(Starlette(routes=[StarletteRoute("/v1/traces", collect, methods=["POST"])])) as url:
        tracing = start_tracing(url, "tuneloop-gateway")
        assert tracing is not None and start_tracing("", "tuneloop-gateway") is None
        record_span(tracing.tracer, "chat demo", 1_000, 2_000, {"gen_ai.request.model": "demo"})
        assert received == []  # batched: not sent on the request's path
        tracing.shutdown()
    [(path, content_type, body)] = received
    assert path == "/v1/traces" and content_type == "application/x-protobuf"
    sent = ExportTraceServiceRequest.FromString(body)
    [resource_spans] = sent.resource_spans
    assert {a.key: a.value.string_value for a in resource_spans.resource.attributes}["service.name"] == \
        "tuneloop-gateway"
    [span] = resource_spans.scope_spans[0].spans
    assert span.name == "chat demo" and (span.start_time_unix_nano, span.end_time_unix_nano) == (1_000, 2_000)


def test_a_bad_endpoint_is_one_line_naming_its_variable(monkeypatch):
    monkeypatch.setenv("TUNELOOP_OTEL_ENDPOINT", "collector:4318")
    with pytest.raises(SettingsError) as refused:
        load_settings()
    message = str(refused.value)
    assert "\n" not in message and "TUNELOOP_OTEL_ENDPOINT" in message and "http(s) URL" in message
    monkeypatch.setenv("TUNELOOP_OTEL_ENDPOINT", "http://collector:4318")
    assert load_settings().otel_endpoint == "http://collector:4318"
    assert traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert traces_url("https://otel.example/custom/traces") == "https://otel.example/custom/traces"


def test_a_sample_ratio_keeps_that_share_of_calls_and_each_calls_spans_together(sqlite_url, tmp_path, upstream):
    for ratio, expected in ((0.0, range(0, 1)), (1.0, range(40, 41)), (0.5, range(8, 33))):
        exporter = InMemorySpanExporter()  # its own: an app's shutdown stops the exporter it was given
        tracing = tracing_with(SimpleSpanProcessor(exporter), "tuneloop-gateway", sample_ratio=ratio)
        with gateway(sqlite_url, tmp_path / f"r{ratio}", upstream, tracing) as client:
            for _ in range(40):
                client.chat.completions.create(model="demo", messages=MESSAGES)
        calls = [s for s in exporter.get_finished_spans() if s.name == "chat demo"]
        servers = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
        assert len(calls) in expected, (ratio, len(calls))  # 0.5: Binomial(40, 0.5), +-4 sd
        assert len(servers) == len(calls)
        # a kept call keeps its HTTP server span: the same traces, never half of one
        assert {s.context.trace_id for s in calls} == {s.context.trace_id for s in servers}
