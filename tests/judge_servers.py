"""Local HTTP servers speaking the Anthropic Messages API and the OpenAI chat API, for judge tests.

No frontier judge is reachable here, so its wire format is served locally and the real SDK clients are
pointed at it. Each request takes the next scripted reply; the request bodies are kept for assertions.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    text: str = ""
    status: int = 200
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class ScriptedServer:
    wire: str  # "anthropic" or "openai"
    replies: list[Reply] = field(default_factory=list)
    default: Reply | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    base_url: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def next_reply(self) -> Reply:
        with self._lock:
            if self.replies:
                return self.replies.pop(0)
        if self.default is None:
            raise AssertionError("the judge made more requests than scripted")
        return self.default

    def body_for(self, reply: Reply, request: dict[str, Any]) -> dict[str, Any]:
        if reply.status != 200:
            kind = {429: "rate_limit_error", 529: "overloaded_error"}.get(reply.status, "api_error")
            if self.wire == "anthropic":
                return {"type": "error", "error": {"type": kind, "message": f"scripted {reply.status}"}}
            return {"error": {"message": f"scripted {reply.status}", "type": kind, "code": None}}
        tokens_in, tokens_out = len(json.dumps(request)) // 4, max(1, len(reply.text) // 4)
        if self.wire == "anthropic":
            return {
                "id": "msg_test", "type": "message", "role": "assistant", "model": request.get("model"),
                "content": [{"type": "text", "text": reply.text}], "stop_reason": "end_turn",
                "stop_sequence": None, "usage": {"input_tokens": tokens_in, "output_tokens": tokens_out},
            }
        return {
            "id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()),
            "model": request.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": tokens_in, "completion_tokens": tokens_out,
                      "total_tokens": tokens_in + tokens_out},
        }


def _handler(server: ScriptedServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", 0))
            request = json.loads(self.rfile.read(length) or b"{}")
            with server._lock:
                server.requests.append(request)
                server.paths.append(self.path)
                server.headers.append({k.lower(): v for k, v in self.headers.items()})
            reply = server.next_reply()
            time.sleep(reply.delay_s)
            payload = json.dumps(server.body_for(reply, request)).encode()
            try:
                self.send_response(reply.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client timed out and left

    return Handler


@contextmanager
def scripted_server(wire: str, replies: list[Reply], default: Reply | None = None) -> Iterator[ScriptedServer]:
    script = ScriptedServer(wire=wire, replies=list(replies), default=default)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(script))
    httpd.daemon_threads = True
    script.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield script
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
