"""Server-sent events from an OpenAI-compatible upstream: split into events, and keep what the log needs.

Events are forwarded as soon as they are complete (the unit a client can use); the accumulator reads each
one on the way past to build the logged answer, finish reason and usage. The upstream's `[DONE]` is held back:
the relay sends its own once the answer's final row is logged (gateway.streaming).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"


@dataclass
class StreamAccumulator:
    """Splits an SSE byte stream into events and accumulates choice 0's text."""

    strip_usage_only_chunks: bool = False  # the gateway asked for usage; the client did not
    response_id: str | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    saw_done: bool = False
    content_events: int = 0
    _parts: list[str] = field(default_factory=list)
    _buffer: bytes = b""

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def feed(self, chunk: bytes) -> list[bytes]:
        """Return the complete events in `chunk` (plus what was buffered), each ending in a blank line."""
        self._buffer += chunk.replace(b"\r\n", b"\n")
        out: list[bytes] = []
        while True:
            end = self._buffer.find(b"\n\n")
            if end < 0:
                return out
            event, self._buffer = self._buffer[: end + 2], self._buffer[end + 2 :]
            if self._observe(event):
                out.append(event)

    def _observe(self, event: bytes) -> bool:
        """Record the event; False when it must not reach the client."""
        for line in event.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                self.saw_done = True
                return False
            try:
                data = orjson.loads(payload)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(data, dict):
                continue
            self.response_id = self.response_id or data.get("id")
            if data.get("usage"):
                self.usage = data["usage"]
            choices = data.get("choices") or []
            if not choices and data.get("usage") and self.strip_usage_only_chunks:
                return False
            for choice in choices:
                if choice.get("index", 0) != 0:
                    continue
                piece = _choice_text(choice)
                if piece:
                    self._parts.append(piece)
                    self.content_events += 1
                if choice.get("finish_reason"):
                    self.finish_reason = choice["finish_reason"]
        return True


def _choice_text(choice: dict[str, Any]) -> str:
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return delta.get("content") or ""
    return choice.get("text") or ""


def answer_text(body: dict[str, Any]) -> tuple[str | None, str | None]:
    """Choice 0's text and finish reason from a non-streamed chat or text completion."""
    choices = body.get("choices") or []
    if not choices:
        return None, None
    first = choices[0]
    message = first.get("message")
    text = message.get("content") if isinstance(message, dict) else first.get("text")
    return text, first.get("finish_reason")


def replay_events(row_id: str, model: str, text: str, finish_reason: str | None, chat: bool) -> list[bytes]:
    """A stored answer as a stream, for an Idempotency-Key retry of a streamed request."""
    if chat:
        chunk = {"id": row_id, "object": "chat.completion.chunk", "model": model,
                 "choices": [{"index": 0, "delta": {"role": "assistant", "content": text},
                              "finish_reason": finish_reason}]}
    else:
        chunk = {"id": row_id, "object": "text_completion", "model": model,
                 "choices": [{"index": 0, "text": text, "finish_reason": finish_reason}]}
    return [b"data: " + orjson.dumps(chunk) + b"\n\n", DONE]


def assembled_completion(row: Any, chat: bool) -> dict[str, Any]:
    """A stored streamed answer as the object a non-streamed request gets (an Idempotency-Key retry of a stream
    asked for without `stream`); `row` is the logged interaction."""
    created = int(row.created_at.timestamp()) if row.created_at else 0
    usage = None
    if row.total_tokens is not None:
        usage = {"prompt_tokens": row.prompt_tokens, "completion_tokens": row.completion_tokens,
                 "total_tokens": row.total_tokens}
    text = row.response_text or ""
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": row.finish_reason}
        kind = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "finish_reason": row.finish_reason, "logprobs": None}
        kind = "text_completion"
    return {"id": row.response_id or row.id, "object": kind, "created": created, "model": row.served_version,
            "choices": [choice], "usage": usage}
