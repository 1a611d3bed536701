"""Idempotency-Key, as Stripe's API has it: one key, one request, one generation, replayed in the shape asked for.

The gateway runs under uvicorn in front of a fake upstream made for each test (its counters start at zero), on
SQLite and on the real PostgreSQL; the official openai client is the caller.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from core.db import make_engine, migrate
from feedback.idempotency import ClaimState, claim_key, release_key, request_fingerprint
from feedback.models import Interaction
from tests.fake_upstream import UpstreamState
from tests.gateway_helpers import running_gateway

MODELS = ("fake", "held", "firstslow", "error500")
QUESTION = [{"role": "user", "content": "Where is order 4821?"}]


@pytest.fixture
def gateway(fake_upstream, any_db_url, tmp_path):
    url, _state = fake_upstream
    with running_gateway(any_db_url, tmp_path, {name: [url] for name in MODELS},
                         timeouts={"connect": 1.0, "first_byte": 20.0, "chunk_gap": 5.0, "total": 30.0}) as gw:
        yield gw


def _generated(state: UpstreamState, model: str) -> int:
    return sum(1 for body in state.requests if body.get("model") == model)


def _post(gateway, path: str, body: dict, key: str | None, stream: bool = False) -> httpx.Response:
    headers = {"Authorization": f"Bearer {gateway.app_key}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return httpx.post(gateway.url + path, json=dict(body, stream=stream), headers=headers, timeout=30)


def _wait_until(condition, timeout_s: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def test_a_retry_with_the_same_key_replays_and_generates_nothing(gateway, fake_upstream):
    _url, state = fake_upstream
    client = gateway.client()
    first = client.chat.completions.with_raw_response.create(
        model="fake", messages=QUESTION, extra_headers={"Idempotency-Key": "abc-1"})
    again = client.chat.completions.with_raw_response.create(
        model="fake", messages=QUESTION, extra_headers={"Idempotency-Key": "abc-1"})
    assert again.parse().id == first.parse().id
    assert again.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert again.headers["x-tuneloop-idempotent-replay"] == "true"
    assert "x-tuneloop-idempotent-replay" not in first.headers  # control: the first one was generated
    assert _generated(state, "fake") == 1 and gateway.count() == 1


def test_concurrent_streams_with_one_key_generate_once_and_every_answer_is_logged(gateway, fake_upstream):
    """12 clients stream with one key at once: one generation; the others hear 409 "in progress" (retryable,
    so the official client's own retries end in the replay); the one answer served has its row."""
    _url, state = fake_upstream

    async def one(client: openai.AsyncOpenAI) -> str:
        stream = await client.chat.completions.create(
            model="held", messages=QUESTION, stream=True, extra_headers={"Idempotency-Key": "same-12"})
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async def scenario() -> tuple[list, list]:
        impatient = gateway.async_client()  # max_retries=0: sees the 409 itself
        first = asyncio.create_task(one(impatient))
        await asyncio.to_thread(_wait_until, lambda: state.held == 1)
        refused = await asyncio.gather(*(one(impatient) for _ in range(11)), return_exceptions=True)
        patient = [asyncio.create_task(one(gateway.async_client(max_retries=8))) for _ in range(3)]
        state.release.set()
        return [await first, *await asyncio.gather(*patient)], refused

    answers, refused = asyncio.run(scenario())
    assert all(isinstance(r, openai.ConflictError) for r in refused), refused
    assert {r.body["code"] for r in refused} == {"idempotency_key_in_progress"}  # type: ignore[union-attr]
    assert answers[0] == "w0 w1 w2 w3 w4 " and set(answers) == {answers[0]}  # the retries got the replay
    assert _generated(state, "held") == 1
    rows = gateway.wait_for_rows(1)
    assert len(rows) == 1 and rows[0].idempotency_key == "same-12" and rows[0].response_text == answers[0]


def test_an_empty_idempotency_key_is_refused(gateway, fake_upstream):
    """(A blank value arrives empty: HTTP servers strip the whitespace around header values.)"""
    _url, state = fake_upstream
    header = ""
    body = {"model": "fake", "messages": QUESTION}
    for stream in (False, True):
        refused = _post(gateway, "/v1/chat/completions", body, header, stream=stream)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["param"] == "Idempotency-Key"
        assert refused.json()["error"]["code"] == "invalid_idempotency_key"
        assert refused.headers["x-request-id"]
    assert _generated(state, "fake") == 0 and gateway.count() == 0
    control = _post(gateway, "/v1/chat/completions", body, None)
    assert control.status_code == 200 and gateway.count() == 1


def test_the_same_key_with_another_request_is_refused_not_replayed(gateway, fake_upstream):
    _url, state = fake_upstream
    body = {"model": "fake", "messages": QUESTION}
    first = _post(gateway, "/v1/chat/completions", body, "k-1")
    assert first.status_code == 200
    other_prompt = _post(gateway, "/v1/chat/completions", {"model": "fake", "messages": [
        {"role": "user", "content": "Cancel order 77"}]}, "k-1")
    other_endpoint = _post(gateway, "/v1/completions", {"model": "fake", "prompt": "Where is order 4821?"}, "k-1")
    for refused in (other_prompt, other_endpoint):
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["code"] == "idempotency_key_reused"
        assert "choices" not in refused.json()
    assert _generated(state, "fake") == 1 and gateway.count() == 1
    same = _post(gateway, "/v1/chat/completions", body, "k-1")  # control: the same request still replays
    assert same.status_code == 200 and same.json()["id"] == first.json()["id"]
    other_key = _post(gateway, "/v1/chat/completions", body, "k-2")  # and a new key generates
    assert other_key.status_code == 200 and _generated(state, "fake") == 2


def test_a_streamed_answer_retried_without_streaming_comes_back_whole(gateway, fake_upstream):
    _url, state = fake_upstream
    client = gateway.client()
    stream = client.chat.completions.create(model="fake", messages=QUESTION, stream=True,
                                            extra_headers={"Idempotency-Key": "s-1"})
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    gateway.wait_for_rows(1)
    retry = client.chat.completions.with_raw_response.create(model="fake", messages=QUESTION,
                                                             extra_headers={"Idempotency-Key": "s-1"})
    completion = retry.parse()
    assert retry.headers["x-tuneloop-idempotent-replay"] == "true"
    assert completion.object == "chat.completion" and completion.id == chunks[0].id
    assert completion.choices[0].message.content == streamed and completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == 5
    list(client.completions.create(model="fake", prompt="Where?", stream=True,
                                   extra_headers={"Idempotency-Key": "t-1"}))
    logged = next(row for row in gateway.wait_for_rows(2) if row.endpoint == "completions")
    whole = client.completions.create(model="fake", prompt="Where?", extra_headers={"Idempotency-Key": "t-1"})
    assert whole.object == "text_completion" and whole.choices[0].text == logged.response_text != ""
    assert _generated(state, "fake") == 2


def test_a_buffered_answer_retried_as_a_stream_is_replayed_as_events(gateway, fake_upstream):
    _url, state = fake_upstream
    client = gateway.client()
    first = client.chat.completions.create(model="fake", messages=QUESTION, extra_headers={"Idempotency-Key": "b"})
    stream = client.chat.completions.create(model="fake", messages=QUESTION, stream=True,
                                            extra_headers={"Idempotency-Key": "b"})
    replayed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert replayed == first.choices[0].message.content and _generated(state, "fake") == 1


def test_the_sdk_retry_after_a_timeout_gets_the_first_answer(gateway, fake_upstream):
    """The first attempt outlives the client's 1 s timeout; the SDK retries with the same key, hears "in
    progress" until the first answer is logged, then gets it: one generation, one row, no second call."""
    _url, state = fake_upstream
    client = gateway.client(max_retries=6, timeout=1.0)
    completion = client.chat.completions.create(model="firstslow", messages=QUESTION,
                                                extra_headers={"Idempotency-Key": "retry-1"})
    assert completion.choices[0].message.content == "w0 w1 w2 w3 w4"
    assert state.firstslow_calls == 1  # control: the first attempt really was the slow one
    assert _generated(state, "firstslow") == 1
    rows = gateway.rows()  # the replay answered from this row, so it is committed by now
    assert len(rows) == 1 and rows[0].idempotency_key == "retry-1" and rows[0].id == completion.id.split("-")[1]


def test_a_failed_request_leaves_its_key_free_for_the_retry(gateway, fake_upstream):
    """An answer that failed fake_upstream is not an answer: the retry with the same key is tried again (not replayed,
    not told "in progress")."""
    _url, state = fake_upstream
    body = {"model": "error500", "messages": QUESTION}
    for attempt in (1, 2):
        failed = _post(gateway, "/v1/chat/completions", body, "f-1")
        assert failed.status_code == 502, failed.text
        assert _generated(state, "error500") == attempt
    answered = {"model": "fake", "messages": QUESTION}  # control: a served answer does keep its key
    assert _post(gateway, "/v1/chat/completions", answered, "f-2").status_code == 200
    again = _post(gateway, "/v1/chat/completions", answered, "f-2")
    assert again.headers.get("x-tuneloop-idempotent-replay") == "true" and _generated(state, "fake") == 1


def test_claims_across_processes(any_db_url):
    """The claim lives in the database, so it holds between gateway processes; an expired one is taken over."""
    engine = make_engine(any_db_url)
    migrate(any_db_url)
    body = {"model": "m", "messages": QUESTION}
    fp = request_fingerprint("chat.completions", body)
    assert claim_key(engine, "key_a", "k", fp, "req-1", ttl_s=30).state == ClaimState.claimed
    assert claim_key(engine, "key_a", "k", fp, "req-2", ttl_s=30).state == ClaimState.in_progress
    other_fp = request_fingerprint("completions", body)
    assert claim_key(engine, "key_a", "k", other_fp, "req-3", ttl_s=30).state == ClaimState.reused
    assert claim_key(engine, "key_b", "k", fp, "req-4", ttl_s=30).state == ClaimState.claimed  # per API key
    release_key(engine, "key_a", "k", "req-2")  # not the holder: nothing released
    assert claim_key(engine, "key_a", "k", fp, "req-5", ttl_s=30).state == ClaimState.in_progress
    release_key(engine, "key_a", "k", "req-1")
    assert claim_key(engine, "key_a", "k", fp, "req-6", ttl_s=0.0).state == ClaimState.claimed
    # req-6's claim expired at once (its holder "died"): the next request takes it over
    assert claim_key(engine, "key_a", "k", fp, "req-7", ttl_s=30).state == ClaimState.claimed
    assert claim_key(engine, "key_a", "k", fp, "req-8", ttl_s=30).state == ClaimState.in_progress
    assert request_fingerprint("chat.completions", dict(body, stream=True)) == fp  # delivery is not the request
    engine.dispose()


def test_a_row_written_before_fingerprints_existed_is_still_checked(any_db_url):
    engine = make_engine(any_db_url)
    migrate(any_db_url)
    body = {"model": "m", "messages": QUESTION}
    from sqlmodel import Session
    with Session(engine) as session:
        session.add(Interaction(id="old-1", api_key_id="key_a", model_alias="m", served_version="m",
                                endpoint="chat.completions", request_body=body, idempotency_key="legacy"))
        session.commit()
    same = claim_key(engine, "key_a", "legacy", request_fingerprint("chat.completions", body), "r", ttl_s=30)
    assert same.state == ClaimState.completed and same.interaction is not None and same.interaction.id == "old-1"
    other = claim_key(engine, "key_a", "legacy", request_fingerprint("completions", body), "r", ttl_s=30)
    assert other.state == ClaimState.reused
    engine.dispose()
