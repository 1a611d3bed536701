"""Feedback, the admin interaction view, metrics, and the store-outage rule (503, never an unlogged 200)."""

from __future__ import annotations

import sqlite3
import threading

import httpx
import openai
import pytest

from core.settings import Settings
from gateway.app import create_app
from tests.gateway_helpers import closed_port_url, running_gateway
from tests.servers import serve


@pytest.fixture
def gateway(upstream_url, any_db_url, tmp_path):
    with running_gateway(any_db_url, tmp_path, {"fake": [upstream_url]}) as gw:
        yield gw


def _ask(gateway, key=None) -> str:
    return gateway.client(key).chat.completions.create(
        model="fake", messages=[{"role": "user", "content": "2+2?"}]
    ).id


def _rate(gateway, key, **body) -> httpx.Response:
    return httpx.post(gateway.url + "/v1/feedback", json=body, headers={"Authorization": f"Bearer {key}"})


def test_feedback_rules(gateway):
    response_id = _ask(gateway)
    first = _rate(gateway, gateway.app_key, response_id=response_id, rating="down", user="u1", comment="wrong")
    assert first.status_code == 200, first.text
    replaced = _rate(gateway, gateway.app_key, response_id=response_id, rating="down", user="u1",
                     correction="4", score=2)
    assert replaced.status_code == 200 and replaced.json()["id"] == first.json()["id"]
    second_user = _rate(gateway, gateway.app_key, response_id=response_id, rating="up", user="u2")
    assert second_user.status_code == 200
    assert _rate(gateway, gateway.other_key, response_id=response_id, rating="up").status_code == 403
    assert _rate(gateway, gateway.admin_key, response_id=response_id, rating="up", user="ops").status_code == 200
    unknown = _rate(gateway, gateway.app_key, response_id="chatcmpl-nope", rating="up")
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "response_id"
    bad = _rate(gateway, gateway.app_key, response_id=response_id, rating="meh")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "rating"
    extra = _rate(gateway, gateway.app_key, response_id=response_id, rating="up", stars=5)
    assert extra.status_code == 400 and extra.json()["error"]["param"] == "stars"

    view = httpx.get(gateway.url + f"/v1/interactions/{response_id}",
                     headers={"Authorization": f"Bearer {gateway.admin_key}"})
    assert view.status_code == 200
    feedback = {f["end_user"]: f for f in view.json()["feedback"]}
    assert set(feedback) == {"u1", "u2", "ops"}
    assert feedback["u1"]["correction"] == "4" and feedback["u1"]["comment"] is None
    assert feedback["u1"]["rating"] == "down" and feedback["u2"]["rating"] == "up"
    forbidden = httpx.get(gateway.url + f"/v1/interactions/{response_id}",
                          headers={"Authorization": f"Bearer {gateway.app_key}"})
    assert forbidden.status_code == 403


def test_metrics_need_admin_and_count_requests(gateway):
    _ask(gateway)
    app_view = httpx.get(gateway.url + "/metrics", headers={"Authorization": f"Bearer {gateway.app_key}"})
    assert app_view.status_code == 403
    text = httpx.get(gateway.url + "/metrics", headers={"Authorization": f"Bearer {gateway.admin_key}"}).text
    assert 'tuneloop_requests_total{endpoint="chat.completions",status="200",version="fake"} 1.0' in text
    assert "tuneloop_log_commit_seconds_count" in text and "tuneloop_log_writer_queue_depth" in text


def test_locked_sqlite_store_answers_503_and_never_an_unlogged_200(upstream_url, sqlite_url, tmp_path):
    with running_gateway(sqlite_url, tmp_path, {"fake": [upstream_url]},
                         log_writer={"store_wait_s": 1.0}) as gateway:
        assert _ask(gateway)
        path = sqlite_url.removeprefix("sqlite:///")
        locker = sqlite3.connect(path, timeout=1)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(openai.InternalServerError) as unavailable:
                _ask(gateway)
            assert unavailable.value.status_code == 503
            assert unavailable.value.body["code"] == "store_unavailable"
        finally:
            locker.rollback()
            locker.close()
        answers = [_ask(gateway) for _ in range(3)]  # the store is back: served and logged again
        logged = {r.response_id for r in gateway.rows() if r.status == "ok"}
        assert set(answers) <= logged


def test_database_down_answers_503(upstream_url, tmp_path):
    """PostgreSQL unreachable: no answer leaves without its row."""
    dead = closed_port_url().replace("http", "postgresql+psycopg") + "/test?connect_timeout=1"
    settings = Settings(home=tmp_path, database_url=dead, upstreams={"fake": [upstream_url]},
                        admin_key="tl-admin-bootstrap", log_writer={"store_wait_s": 1.0})
    with serve(create_app(settings)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="tl-admin-bootstrap", max_retries=0)
        with pytest.raises(openai.InternalServerError) as unavailable:
            client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "x"}])
        assert unavailable.value.status_code == 503
        health = httpx.get(url + "/health").json()
        assert health == {"status": "degraded", "store": "unavailable"}
        with httpx.stream("POST", url + "/v1/chat/completions", headers={"Authorization": "Bearer tl-admin-bootstrap"},
                          json={"model": "fake", "stream": True,
                                "messages": [{"role": "user", "content": "x"}]}) as response:
            assert response.status_code == 503


def test_concurrent_ratings_by_one_user_keep_one_row(gateway):
    response_id = _ask(gateway)
    results: list[int] = []

    def rate(rating: str) -> None:
        results.append(_rate(gateway, gateway.app_key, response_id=response_id, rating=rating, user="same").status_code)

    threads = [threading.Thread(target=rate, args=("up" if i % 2 else "down",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 8
    view = httpx.get(gateway.url + f"/v1/interactions/{response_id}",
                     headers={"Authorization": f"Bearer {gateway.admin_key}"}).json()
    assert len(view["feedback"]) == 1
