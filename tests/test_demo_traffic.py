"""The simulated users' ratings survive a keep-alive connection the gateway closed under them."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from deploy.demo_traffic import FEEDBACK_ATTEMPTS, post_feedback


def _client(failures: int, status: int = 200) -> tuple[httpx.AsyncClient, list[dict]]:
    sent: list[dict] = []

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        if len(sent) <= failures:
            raise httpx.ReadError("connection closed by the server", request=request)
        return httpx.Response(status, json={"rating": sent[-1]["rating"]})

    return httpx.AsyncClient(base_url="http://gateway", transport=httpx.MockTransport(handle)), sent


def test_a_rating_whose_connection_broke_is_sent_again_unchanged() -> None:
    client, sent = _client(failures=1)
    body = {"response_id": "chatcmpl-1", "user": "user-3", "rating": "down", "correction": "42"}
    assert asyncio.run(post_feedback(client, body)) == {"rating": "down"}
    assert sent == [body, body]


def test_a_connection_that_keeps_breaking_is_reported_after_the_last_attempt() -> None:
    client, sent = _client(failures=FEEDBACK_ATTEMPTS)
    with pytest.raises(httpx.ReadError):
        asyncio.run(post_feedback(client, {"response_id": "chatcmpl-1", "rating": "up"}))
    assert len(sent) == FEEDBACK_ATTEMPTS


def test_a_refused_rating_is_not_sent_again() -> None:
    client, sent = _client(failures=0, status=404)
    with pytest.raises(httpx.HTTPStatusError):
        asyncio.run(post_feedback(client, {"response_id": "chatcmpl-missing", "rating": "up"}))
    assert len(sent) == 1
