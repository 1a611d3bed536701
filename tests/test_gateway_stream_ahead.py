"""A stream's row is written ahead: it exists (`in_progress`) from the first byte the client gets, and the end of
the stream replaces it with the answer, one row under one id. If it cannot be written the client gets a 503, not
a stream. SQLite, a gateway under uvicorn, a fake upstream that pauses after its first chunk until told to go on.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from dataclasses import replace
from datetime import UTC, datetime

import httpx
import pytest
from sqlmodel import Session, select

from core.db import make_engine
from feedback.examples import Example
from feedback.interaction_log import InteractionLog, RowRejected, StoreUnavailable, interaction_values
from feedback.models import Interaction, InteractionStatus
from feedback.selection import InteractionRow, Vote, select_example
from tests.gateway_helpers import running_gateway

BODY = {"model": "pause", "messages": [{"role": "user", "content": "tell me"}], "stream": True}


@pytest.fixture
def gateway(fake_upstream, sqlite_url, tmp_path):
    url, _state = fake_upstream
    with running_gateway(sqlite_url, tmp_path, {"pause": [url]}, log_writer={"store_wait_s": 1.0}) as gw:
        yield gw


def _row(gateway, row_id: str) -> Interaction | None:
    with Session(gateway.engine, expire_on_commit=False) as session:
        return session.get(Interaction, row_id)


def test_an_open_stream_has_its_in_progress_row_and_its_end_replaces_it(gateway, fake_upstream):
    _url, state = fake_upstream
    headers = {"Authorization": f"Bearer {gateway.app_key}"}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=BODY, headers=headers,
                      timeout=30) as response:
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]
        lines = response.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert json.loads(first[6:])["choices"][0]["delta"]["content"] == "w0 "
        # the upstream is paused after its first chunk: the stream is open, the client has bytes
        during = _row(gateway, request_id)
        assert during is not None and during.status == InteractionStatus.in_progress
        assert during.response_text is None and during.completed_at is None
        assert gateway.count() == 1
        # the user may rate what they are reading: by the request id, the only id its row has yet
        rated = httpx.post(gateway.url + "/v1/feedback", headers=headers,
                           json={"response_id": request_id, "rating": "up"})
        assert rated.status_code == 200
        state.release.set()
        rest = [line[6:] for line in lines if line.startswith("data: ")]
    assert rest[-1] == "[DONE]"
    after = _row(gateway, request_id)  # final as soon as the client saw [DONE]: no waiting
    assert after is not None and after.status == InteractionStatus.ok
    assert after.response_text == "w0 w1 w2 w3 w4 " and after.completed_at is not None
    assert after.created_at == during.created_at  # the same row, replaced, not a second one
    assert after.response_id == f"chatcmpl-{request_id}"
    assert gateway.count() == 1
    view = httpx.get(gateway.url + f"/v1/interactions/{request_id}",
                     headers={"Authorization": f"Bearer {gateway.admin_key}"}).json()
    assert view["status"] == "ok" and [f["rating"] for f in view["feedback"]] == ["up"]  # kept across the replace


def test_curation_never_learns_from_an_unfinished_stream():
    row = InteractionRow(id="r1", created_at=datetime.now(UTC), endpoint="chat.completions",
                         request_body={"messages": [{"role": "user", "content": "hi"}]}, response_text=None,
                         finish_reason=None, status=InteractionStatus.in_progress)
    vote = Vote(rating="up", correction="A fine answer.", end_user="u1", updated_at=datetime.now(UTC))
    assert select_example(row, [vote]) == "in_progress"
    assert isinstance(select_example(replace(row, status=InteractionStatus.ok, response_text="Hello."), [vote]),
                      Example)  # control: the same row, finished, is learnt from


def test_a_stream_whose_row_cannot_be_written_ahead_is_refused_with_503(gateway, fake_upstream, sqlite_url):
    _url, state = fake_upstream
    state.release.set()  # the streams here need no pause
    headers = {"Authorization": f"Bearer {gateway.app_key}"}
    body = dict(BODY, model="pause")
    assert httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=headers).status_code == 200
    locker = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), timeout=1)
    locker.execute("BEGIN EXCLUSIVE")  # the writer is healthy, so the stream starts; its ahead row cannot commit
    try:
        refused = httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=headers, timeout=30)
    finally:
        locker.rollback()
        locker.close()
    assert refused.status_code == 503
    assert refused.headers["content-type"] == "application/json"
    assert refused.json()["error"]["code"] == "store_unavailable" and "data:" not in refused.text
    assert refused.headers["x-request-id"] in state.request_ids  # refused after the upstream was asked
    served = httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=headers, timeout=30)
    assert served.status_code == 200 and served.text.rstrip().endswith("data: [DONE]")


def _log_row(row_id: str, **fields) -> dict:  # type: ignore[no-untyped-def]
    return interaction_values(id=row_id, api_key_id="key", model_alias="alias", served_version="v1",
                              endpoint="chat.completions", **fields)


async def test_the_log_writer_replaces_a_row_by_id_whether_it_shares_a_batch_or_not(any_db_url):
    engine = make_engine(any_db_url)
    writer = InteractionLog(engine)
    await writer.start()
    ahead = {"status": InteractionStatus.in_progress, "stream": True}
    final = {"status": InteractionStatus.ok, "stream": True, "response_text": "the answer"}
    await writer.write(_log_row("apart", **ahead))
    await writer.write(_log_row("apart", **final), replace=True)
    await asyncio.gather(writer.write(_log_row("together", **ahead)),  # queued together: most likely one batch
                         writer.write(_log_row("together", **final), replace=True))
    await writer.write(_log_row("alone", **final), replace=True)  # no row ahead of it: inserted
    with pytest.raises(RowRejected):  # control: a plain write still refuses an id that exists
        await writer.write(_log_row("apart", **ahead))
    await writer.stop()
    with Session(engine) as session:
        rows = session.exec(select(Interaction)).all()
    engine.dispose()
    assert sorted((r.id, r.status, r.response_text) for r in rows) == [
        ("alone", "ok", "the answer"), ("apart", "ok", "the answer"), ("together", "ok", "the answer")]


async def test_a_row_whose_caller_was_told_503_is_not_committed_later(sqlite_url):
    engine = make_engine(sqlite_url)
    writer = InteractionLog(engine, max_batch=1, store_wait_s=0.5)  # one row per batch: the second waits in line
    await writer.start()
    locker = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), timeout=1)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        outcomes = await asyncio.gather(writer.write(_log_row("under-way")), writer.write(_log_row("queued")),
                                        return_exceptions=True)
    finally:
        locker.rollback()
        locker.close()
    assert [type(o) for o in outcomes] == [StoreUnavailable, StoreUnavailable]
    await writer.stop()  # the store is back: whatever is still queued is written now, or dropped
    with Session(engine) as session:
        ids = [r.id for r in session.exec(select(Interaction)).all()]
    engine.dispose()
    # the first was in its commit when its caller gave up, and that commit went through once the lock was gone
    # (the control: the store took writes again); the second was still queued, and stays unwritten
    assert ids == ["under-way"]
