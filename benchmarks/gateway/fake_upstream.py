"""A minimal, fast OpenAI-compatible upstream for the gateway benchmark: raw asyncio + httptools + uvloop.

POST .../v1/chat/completions and .../v1/completions, non-streamed JSON or streamed SSE (a role chunk, a few
content chunks `--chunk-gap-ms` apart, a finish chunk, a usage chunk when `stream_options.include_usage`,
then [DONE]). The path may carry a prefix (`/gw/v1/...`, `/litellm/v1/...`): requests are counted per prefix,
so the benchmark knows exactly how many calls each proxy made. GET /stats returns those counts as JSON.

Also a minimal OTLP/HTTP traces sink for a gateway with tracing on: POST /v1/traces answers 200 (an empty
ExportTraceServiceResponse) and counts the posts, their bytes and the spans in them by name (decoded with
opentelemetry-proto when it is installed); GET /otlp returns those counts as JSON.

Run: python fake_upstream.py --port 9000 [--chunk-gap-ms 2]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from collections import Counter
from typing import Any

import httptools
import orjson
import uvloop

try:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
except ImportError:  # the sink then counts posts and bytes only
    ExportTraceServiceRequest = None

WORDS = ["Hello", "from", "the", "fake", "upstream", "benchmark."]
TEXT = " ".join(WORDS)
USAGE = {"prompt_tokens": 12, "completion_tokens": len(WORDS), "total_tokens": 12 + len(WORDS)}
REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found"}


class Upstream:
    """Shared state of all connections: the id counter and per-prefix request counts."""

    def __init__(self, chunk_gap_s: float) -> None:
        self.chunk_gap_s = chunk_gap_s
        self.ids = itertools.count()
        self.counts: Counter[str] = Counter()
        self.otlp_posts = 0
        self.otlp_bytes = 0
        self.otlp_undecoded = 0  # posts whose spans could not be counted (no opentelemetry-proto, bad body)
        self.spans: Counter[str] = Counter()  # span name -> spans received

    def take_traces(self, body: bytes) -> None:
        self.otlp_posts += 1
        self.otlp_bytes += len(body)
        try:
            request = ExportTraceServiceRequest.FromString(body)  # type: ignore[union-attr]
        except Exception:  # no opentelemetry-proto (None has no FromString), or not a valid request
            self.otlp_undecoded += 1
            return
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                self.spans.update(span.name for span in scope.spans)

    def otlp_stats(self) -> bytes:
        return orjson.dumps({"posts": self.otlp_posts, "bytes": self.otlp_bytes, "undecoded": self.otlp_undecoded,
                             "spans": self.spans})


def head(status: int, content_type: bytes, length: int | None, keep_alive: bool) -> bytes:
    lines = [b"HTTP/1.1 %d %s" % (status, REASONS.get(status, b"Error")), b"content-type: " + content_type]
    lines.append(b"transfer-encoding: chunked" if length is None else b"content-length: %d" % length)
    if not keep_alive:
        lines.append(b"connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


def completion(rid: str, model: str, chat: bool) -> bytes:
    choice: dict[str, Any] = (
        {"index": 0, "message": {"role": "assistant", "content": TEXT}, "logprobs": None, "finish_reason": "stop"}
        if chat else {"index": 0, "text": TEXT, "logprobs": None, "finish_reason": "stop"}
    )
    return orjson.dumps({
        "id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
        "model": model, "choices": [choice], "usage": USAGE,
    })


def stream_events(rid: str, model: str, chat: bool, include_usage: bool) -> list[bytes]:
    obj = "chat.completion.chunk" if chat else "text_completion"
    created = int(time.time())

    def event(choice: dict[str, Any] | None, usage: dict[str, int] | None = None) -> bytes:
        body: dict[str, Any] = {"id": rid, "object": obj, "created": created, "model": model,
                                "choices": [choice] if choice else []}
        if usage:
            body["usage"] = usage
        return b"data: " + orjson.dumps(body) + b"\n\n"

    def piece(text: str, finish: str | None = None, role: bool = False) -> dict[str, Any]:
        if not chat:
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        delta = {"role": "assistant", "content": text} if role else ({"content": text} if text else {})
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    events = [event(piece("", role=True))] if chat else []
    events += [event(piece(w + " ")) for w in WORDS]
    events.append(event(piece("", "stop")))
    if include_usage:
        events.append(event(None, USAGE))
    events.append(b"data: [DONE]\n\n")
    return events


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class HttpConnection(asyncio.Protocol):
    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []
        self.streaming: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.streaming is not None:
            self.streaming.cancel()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.send(400, b"application/json", b'{"error":"bad request"}', keep_alive=False)

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        keep_alive = self.parser.should_keep_alive()
        method = self.parser.get_method()
        path = self.url.split(b"?", 1)[0].decode()
        if method == b"GET" and path == "/stats":
            self.send(200, b"application/json", orjson.dumps(self.upstream.counts), keep_alive)
            return
        if method == b"GET" and path == "/otlp":
            self.send(200, b"application/json", self.upstream.otlp_stats(), keep_alive)
            return
        if method == b"POST" and path == "/v1/traces":
            self.upstream.take_traces(b"".join(self.body))
            self.send(200, b"application/x-protobuf", b"", keep_alive)
            return
        if method == b"GET" and path.endswith("/health"):
            self.send(200, b"text/plain", b"ok", keep_alive)
            return
        chat = path.endswith("/v1/chat/completions")
        if method != b"POST" or not (chat or path.endswith("/v1/completions")):
            self.send(404, b"application/json", b'{"error":{"message":"not found"}}', keep_alive)
            return
        try:
            request = orjson.loads(b"".join(self.body))
        except orjson.JSONDecodeError:
            self.send(400, b"application/json", b'{"error":{"message":"invalid JSON"}}', keep_alive)
            return
        prefix = path[: path.index("/v1/")] or "/"
        self.upstream.counts[prefix] += 1
        rid = f"chatcmpl-{next(self.upstream.ids)}"
        model = str(request.get("model", ""))
        if not request.get("stream"):
            self.send(200, b"application/json", completion(rid, model, chat), keep_alive)
            return
        include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        events = stream_events(rid, model, chat, include_usage)
        if self.transport is None:
            return
        self.transport.write(head(200, b"text/event-stream", None, keep_alive) + chunked(events[0]))
        if self.upstream.chunk_gap_s <= 0:
            self.transport.write(b"".join(chunked(e) for e in events[1:]) + b"0\r\n\r\n")
            if not keep_alive:
                self.transport.close()
            return
        self.streaming = asyncio.get_running_loop().create_task(self.drip(events[1:], keep_alive))

    async def drip(self, events: list[bytes], keep_alive: bool) -> None:
        for event in events:
            await asyncio.sleep(self.upstream.chunk_gap_s)
            if self.transport is None:
                return
            self.transport.write(chunked(event))
        if self.transport is None:
            return
        self.transport.write(b"0\r\n\r\n")
        self.streaming = None
        if not keep_alive:
            self.transport.close()

    def send(self, status: int, content_type: bytes, body: bytes, keep_alive: bool) -> None:
        if self.transport is None:
            return
        self.transport.write(head(status, content_type, len(body), keep_alive) + body)
        if not keep_alive:
            self.transport.close()


async def serve(host: str, port: int, chunk_gap_s: float) -> None:
    upstream = Upstream(chunk_gap_s)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: HttpConnection(upstream), host, port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--chunk-gap-ms", type=float, default=2.0, help="Pause between streamed chunks.")
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port, args.chunk_gap_ms / 1000))


if __name__ == "__main__":
    main()
