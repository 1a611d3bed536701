"""The gateway under uvicorn, driven by the official openai client, in front of a local fake upstream."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest

from feedback.models import InteractionStatus
from tests.fake_upstream import UpstreamState, make_fake_upstream
from tests.gateway_helpers import closed_port_url, running_gateway
from tests.servers import serve

FAULT_MODELS = ("fake", "error500", "badrequest", "slow", "reset", "drip", "stall", "firstslow")


@pytest.fixture(scope="module")
def upstream():
    state = UpstreamState()
    with serve(make_fake_upstream(state)) as url:
        yield url, state


@pytest.fixture
def gateway(upstream, any_db_url, tmp_path):
    url, _state = upstream
    upstreams = {name: [url] for name in FAULT_MODELS}
    upstreams["down"] = [closed_port_url()]
    upstreams["multi"] = [closed_port_url(), url]
    with running_gateway(
        any_db_url, tmp_path, upstreams,
        timeouts={"connect": 1.0, "first_byte": 1.5, "chunk_gap": 0.5, "total": 10.0},
        max_body_bytes=64 * 1024,
    ) as gw:
        yield gw


def test_chat_non_streamed_is_logged_before_it_is_answered(gateway):
    raw = gateway.client().chat.completions.with_raw_response.create(
        model="fake", messages=[{"role": "user", "content": "hello"}], temperature=0.2, seed=7,
        extra_body={"tool_choice": "none", "top_k": 5},
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "w0 w1 w2 w3 w4"
    request_id = raw.headers["x-request-id"]
    assert raw.headers["x-tuneloop-version"] == "fake"
    rows = gateway.rows()  # no waiting: the row was committed before the answer left
    assert len(rows) == 1
    row = rows[0]
    assert row.id == request_id and row.response_id == completion.id == f"chatcmpl-{request_id}"
    assert row.status == InteractionStatus.ok and row.response_text == "w0 w1 w2 w3 w4"
    assert row.total_tokens == 8 and row.finish_reason == "stop" and row.api_key_id == gateway.app_key_id
    # fields the gateway does not use pass through unchanged
    assert row.request_body["seed"] == 7 and row.request_body["tool_choice"] == "none"
    assert row.request_body["top_k"] == 5


def test_streamed_chat_relays_chunks_and_logs_text_and_usage(gateway, upstream):
    _url, state = upstream
    stream = gateway.client().chat.completions.create(
        model="fake", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "w0 w1 w2 w3 w4 "
    assert all(c.choices for c in chunks), "the usage chunk the gateway asked for must not reach the client"
    assert state.requests[-1]["stream_options"] == {"include_usage": True}
    row = gateway.wait_for_rows(1)[0]
    assert row.stream and row.response_text == text and row.completion_tokens == 5
    assert row.status == InteractionStatus.ok and row.ttft_ms is not None and row.ttft_ms <= row.latency_ms


def test_streamed_usage_reaches_client_that_asked(gateway):
    stream = gateway.client().chat.completions.create(
        model="fake", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True},
    )
    usage = [c.usage for c in stream if c.usage]
    assert usage and usage[0].total_tokens == 10


async def test_async_client_streams(gateway):
    client = gateway.async_client()
    stream = await client.chat.completions.create(
        model="fake", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    pieces = [c.choices[0].delta.content async for c in stream if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == "w0 w1 w2 w3 w4 "
    await client.close()


def test_text_completions_and_models(gateway):
    completion = gateway.client().completions.create(model="fake", prompt="Say", max_tokens=5)
    assert completion.choices[0].text == "w0 w1 w2 w3 w4"
    assert gateway.rows()[0].endpoint == "completions"
    names = {m.id for m in gateway.client().models.list()}
    assert {"fake", "down", "multi"} <= names


def test_auth_errors_are_openai_shaped(gateway):
    with pytest.raises(openai.AuthenticationError) as missing:
        gateway.client(key="tl-wrong").chat.completions.create(
            model="fake", messages=[{"role": "user", "content": "x"}]
        )
    assert missing.value.body["code"] == "invalid_api_key"
    response = httpx.post(gateway.url + "/v1/chat/completions", json={})
    assert response.status_code == 401 and set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert httpx.get(gateway.url + "/health").status_code == 200  # the only open path
    assert gateway.count() == 0


def test_bad_requests_name_the_field(gateway):
    client = gateway.client()
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert unknown.value.body["param"] == "model" and unknown.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as no_messages:
        client.chat.completions.create(model="fake", messages=[])
    assert no_messages.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as bad_role:
        client.chat.completions.create(model="fake", messages=[{"content": "x"}])  # type: ignore[list-item]
    assert bad_role.value.body["param"] == "messages.0.role"
    with pytest.raises(openai.BadRequestError) as bad_temp:
        client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "x"}], temperature=9)
    assert bad_temp.value.body["param"] == "temperature"
    headers = {"Authorization": f"Bearer {gateway.app_key}", "content-type": "application/json"}
    invalid_json = httpx.post(gateway.url + "/v1/chat/completions", content=b"{nope", headers=headers)
    assert invalid_json.status_code == 400 and invalid_json.json()["error"]["code"] == "invalid_json"
    huge = {"model": "fake", "messages": [{"role": "user", "content": "x" * 70_000}]}
    too_big = httpx.post(gateway.url + "/v1/chat/completions", json=huge, headers=headers)
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "request_too_large"
    # an upstream 4xx is the caller's error and keeps its status and field
    with pytest.raises(openai.BadRequestError) as upstream_400:
        client.chat.completions.create(model="badrequest", messages=[{"role": "user", "content": "x"}])
    assert upstream_400.value.body["param"] == "max_tokens"


def test_upstream_down_and_failing(gateway):
    client = gateway.client()
    with pytest.raises(openai.InternalServerError) as down:
        client.chat.completions.create(model="down", messages=[{"role": "user", "content": "x"}])
    assert down.value.status_code == 502 and down.value.body["code"] == "upstream_unavailable"
    # connect refused on one replica: retried on the other
    assert client.chat.completions.create(model="multi", messages=[{"role": "user", "content": "x"}]).choices
    with pytest.raises(openai.InternalServerError) as crashed:
        client.chat.completions.create(model="error500", messages=[{"role": "user", "content": "x"}])
    assert crashed.value.status_code == 502 and "engine crashed" in crashed.value.message
    with pytest.raises(openai.InternalServerError) as slow:
        client.chat.completions.create(model="slow", messages=[{"role": "user", "content": "x"}])
    assert slow.value.status_code == 504
    statuses = sorted((r.served_version, str(r.status), r.http_status) for r in gateway.rows())
    assert statuses == [
        ("down", "upstream_error", 502), ("error500", "upstream_error", 502), ("multi", "ok", 200),
        ("slow", "upstream_error", 504),
    ]


def _sse_events(response: httpx.Response) -> list[str]:
    return [line[6:] for line in response.iter_lines() if line.startswith("data: ")]


def test_upstream_reset_mid_stream_ends_with_error_chunk_and_done(gateway):
    headers = {"Authorization": f"Bearer {gateway.app_key}"}
    body = {"model": "reset", "messages": [{"role": "user", "content": "x"}], "stream": True}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, headers=headers) as response:
        events = _sse_events(response)
    assert events[-1] == "[DONE]" and "error" in json.loads(events[-2])
    row = gateway.wait_for_rows(1)[0]
    assert row.status == InteractionStatus.upstream_error and row.response_text == "w0 w1 "


def test_stalled_stream_hits_chunk_gap_timeout(gateway):
    headers = {"Authorization": f"Bearer {gateway.app_key}"}
    body = {"model": "stall", "messages": [{"role": "user", "content": "x"}], "stream": True}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, headers=headers) as response:
        events = _sse_events(response)
    assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == "upstream_timeout"


def test_client_disconnect_mid_stream_logs_partial_text_and_cancels_upstream(gateway, upstream):
    _url, state = upstream
    cancelled_before = state.cancelled_streams
    headers = {"Authorization": f"Bearer {gateway.app_key}"}
    body = {"model": "drip", "messages": [{"role": "user", "content": "x"}], "stream": True}
    received = []
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, headers=headers) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                received.append(line)
            if len(received) == 3:
                break
    row = gateway.wait_for_rows(1)[0]
    assert row.status == InteractionStatus.client_disconnected
    assert row.response_text and row.response_text.startswith("w0 w1 w2 ")
    assert len(row.response_text.split()) < 200
    for _ in range(100):
        if state.cancelled_streams > cancelled_before:
            break
        time.sleep(0.05)
    assert state.cancelled_streams > cancelled_before, "the upstream generation must be cancelled"


async def test_200_concurrent_requests_make_exactly_200_rows(gateway):
    headers = {"Authorization": f"Bearer {gateway.app_key}"}
    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(base_url=gateway.url, headers=headers, limits=limits, timeout=30) as client:
        async def one(i: int) -> int:
            body = {"model": "fake", "messages": [{"role": "user", "content": f"q{i}"}], "stream": i % 2 == 0}
            response = await client.post("/v1/chat/completions", json=body)
            return response.status_code

        codes = await asyncio.gather(*(one(i) for i in range(200)))
    assert codes == [200] * 200
    rows = await asyncio.to_thread(gateway.wait_for_rows, 200)
    assert len(rows) == 200 and len({r.id for r in rows}) == 200
    assert {r.request_body["messages"][0]["content"] for r in rows} == {f"q{i}" for i in range(200)}


async def test_stream_abandoned_before_its_first_chunk_runs_the_cleanup():
    """An unstarted generator's `finally` never runs; the response must do that cleanup itself."""
    from gateway.proxy import LoggedStreamingResponse

    relay_started, abandoned = [], []

    async def relay():
        relay_started.append(True)
        yield b"data: never\n\n"

    async def on_never_started() -> None:
        abandoned.append(True)

    async def receive() -> dict:
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            await asyncio.sleep(3600)  # the client is gone before even the headers are delivered

    response = LoggedStreamingResponse(relay(), on_never_started=on_never_started, media_type="text/event-stream")
    await response({"type": "http", "asgi": {"spec_version": "2.3"}}, receive, send)
    assert relay_started == [] and abandoned == [True]
