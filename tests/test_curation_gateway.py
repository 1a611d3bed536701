"""Curation over a store filled through the real gateway (uvicorn, the openai client, POST /v1/feedback)."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from core.settings import Settings
from feedback.curate import curate
from feedback.policy import CurationPolicy
from tests.fake_upstream import UpstreamState, make_fake_upstream
from tests.gateway_helpers import running_gateway
from tests.servers import serve


@pytest.fixture
def gateway(any_db_url, tmp_path):
    with serve(make_fake_upstream(UpstreamState())) as upstream, \
            running_gateway(any_db_url, tmp_path, {"fake": [upstream], "error500": [upstream]}) as gw:
        yield gw


def test_curate_over_gateway_traffic(gateway, any_db_url, tmp_path):
    client = gateway.client()
    headers = {"Authorization": f"Bearer {gateway.app_key}"}

    def ask(question: str, **extra) -> str:
        return client.chat.completions.create(model="fake", messages=[{"role": "user", "content": question}],
                                              **extra).id

    def rate(response_id: str, **body) -> None:
        response = httpx.post(gateway.url + "/v1/feedback", json={"response_id": response_id, **body},
                              headers=headers)
        assert response.status_code == 200, response.text

    rate(ask("liked question, mail me at ann@example.com"), rating="up")
    rate(ask("corrected question"), rating="down", correction="the corrected answer")
    rate(ask("disliked question"), rating="down")
    stream = client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "streamed question"}],
                                            stream=True)
    streamed_id = next(chunk.id for chunk in stream)
    list(stream)
    gateway.wait_for_row(streamed_id)
    rate(streamed_id, rating="up")
    tied = ask("tied question")
    rate(tied, rating="up", user="a")
    rate(tied, rating="down", user="b")
    ask("unrated question")
    with pytest.raises(openai.InternalServerError) as failed:
        client.chat.completions.with_raw_response.create(model="error500",
                                                         messages=[{"role": "user", "content": "x"}])
    rate(failed.value.response.headers["x-request-id"], rating="up")
    rate(client.completions.create(model="fake", prompt="plain completion").id, rating="up")

    settings = Settings(home=tmp_path, database_url=any_db_url)
    result = curate(gateway.engine, settings, CurationPolicy(min_tokens=0, max_tokens=None), "fake")
    assert result.dataset_id is not None and result.dataset_id.startswith("ds-")
    assert result.counts["selected"] == {"correction": 1, "thumbs_up": 2}
    excluded = result.counts["excluded"]
    assert excluded["down_without_correction"] == 1 and excluded["conflicting_ratings"] == 1
    assert excluded["no_feedback"] == 1 and excluded["not_chat"] == 1
    rows = [json.loads(line) for split in ("train", "eval")
            for line in result.paths[split].read_text().splitlines()]
    conversations = {r["messages"][-2]["content"]: r["messages"][-1]["content"] for r in rows}
    assert conversations["corrected question"] == "the corrected answer"
    assert conversations["streamed question"] == "w0 w1 w2 w3 w4 "
    liked = next(q for q in conversations if q.startswith("liked question"))
    assert "ann@example.com" not in liked and conversations[liked] == "w0 w1 w2 w3 w4"
    failures = curate(gateway.engine, settings, CurationPolicy(min_tokens=0, max_tokens=None), "error500")
    assert failures.dataset_id is None and failures.counts["excluded"]["upstream_error"] == 1
    again = curate(gateway.engine, settings, CurationPolicy(min_tokens=0, max_tokens=None), "fake")
    assert again.dataset_id is None  # nothing new since the last version
