"""The canary split through the real gateway (uvicorn, the official openai client, registry routing) in front of
two fake upstreams, one per version: an app with one API key that sends no `user` sees both arms in about the
weight's proportion (each request drawn by the weight); with `user`, an end user stays on one arm."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from core.db import make_engine
from core.policies import CanaryPolicy
from deploy import canary
from gateway.registry_router import in_canary
from registry import store
from tests.fake_upstream import UpstreamState, make_fake_upstream
from tests.gateway_helpers import RunningGateway, running_gateway
from tests.servers import serve
from tests.test_deploy_helpers import base_and_candidate, fake_deployment

WEIGHT = 30
REQUESTS = 200


@dataclass
class Split:
    gateway: RunningGateway
    production: str
    candidate: str
    upstreams: dict[str, UpstreamState]


@pytest.fixture
def split(any_db_url: str, tmp_path: Path) -> Iterator[Split]:
    engine = make_engine(any_db_url)
    production, candidate = base_and_candidate(engine, tmp_path)
    upstreams = {production: UpstreamState(), candidate: UpstreamState()}
    with serve(make_fake_upstream(upstreams[production])) as production_url, \
            serve(make_fake_upstream(upstreams[candidate])) as candidate_url:
        fake_deployment(engine, production, production_url)
        fake_deployment(engine, candidate, candidate_url)
        store.start_canary(engine, candidate, WEIGHT, "test", "split through the gateway")
        with running_gateway(any_db_url, tmp_path / "home", upstreams={}) as gateway:
            yield Split(gateway, production, candidate, upstreams)
    engine.dispose()


def ask(split: Split, n: int, user: str | None = None) -> list[str]:
    """`n` chat requests with the app's one key; the version each was served by (x-tuneloop-version)."""
    client = split.gateway.client()
    extra = {"user": user} if user is not None else {}
    versions = []
    for i in range(n):
        raw = client.chat.completions.with_raw_response.create(
            model="assistant", messages=[{"role": "user", "content": f"question {i}"}], **extra)
        completion = raw.parse()
        version = raw.headers["x-tuneloop-version"]
        assert completion.model == version  # the upstream of that version answered (served name = version id)
        versions.append(version)
    return versions


def test_an_app_without_user_sees_both_arms_by_the_weight(split: Split) -> None:
    versions = ask(split, REQUESTS)
    counts = Counter(versions)
    assert set(counts) == {split.production, split.candidate}, counts
    # real (unseeded) gateway RNG: Binomial(200, 0.3) has mean 60 and sd 6.5; +-30 is 4.6 sd (odds of a false
    # failure ~ 1e-5), while the bug this guards against (one sticky key per app) gives 0 or 200
    sd = math.sqrt(REQUESTS * WEIGHT / 100 * (1 - WEIGHT / 100))
    assert abs(counts[split.candidate] - REQUESTS * WEIGHT / 100) <= 4.6 * sd, counts
    # the header tells the truth: each upstream received exactly the requests labelled with its version
    assert len(split.upstreams[split.candidate].requests) == counts[split.candidate]
    assert len(split.upstreams[split.production].requests) == counts[split.production]
    # and the canary analysis sees the canary's traffic in its stage (rows are written before the answer)
    _state, figures, analysis = canary.evaluate(split.gateway.engine, "assistant", CanaryPolicy())
    assert figures[split.candidate].requests == counts[split.candidate]
    assert analysis is not None and not analysis.no_canary_traffic


def test_an_end_user_keeps_their_arm_through_the_gateway(split: Split) -> None:
    # control for the draw above: with `user`, 50 requests of one user all go to the arm of their hash
    for user in ("alice", "bob", "carol", "dave"):
        expected = split.candidate if in_canary("assistant", split.candidate, user, WEIGHT) else split.production
        assert set(ask(split, 50, user=user)) == {expected}, user
