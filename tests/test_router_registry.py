"""The registry-backed router on the real store (SQLite and PostgreSQL): weighted sticky split per end user, a
per-request draw by the weight for requests without `user`, cache, agreement between gateway processes,
fallbacks, and the composite with static routes."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from sqlalchemy import Engine

from core.db import make_engine
from core.deployments_table import DeploymentStatus
from deploy.deployments import active_deployments, set_status
from gateway.errors import GatewayError
from gateway.registry_router import CompositeRouter, RegistryRouter, canary_bucket, choose_canary, in_canary
from gateway.routing import StaticRouter
from registry import store
from tests.test_deploy_helpers import base_and_candidate, fake_deployment

USERS = [f"user-{i}" for i in range(4000)]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def engine(any_db_url: str):
    engine = make_engine(any_db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def canary(engine: Engine, tmp_path: Path) -> tuple[str, str]:
    production, candidate = base_and_candidate(engine, tmp_path)
    fake_deployment(engine, production, "http://127.0.0.1:9001")
    fake_deployment(engine, candidate, "http://127.0.0.1:9002")
    store.start_canary(engine, candidate, 20, "test", "split test")
    return production, candidate


async def arms(router: RegistryRouter, users: list[str] = USERS) -> dict[str, str]:
    return {user: (await router.resolve("assistant", user)).version for user in users}  # type: ignore[union-attr]


async def test_split_matches_the_weight_and_is_sticky(engine: Engine, canary: tuple[str, str]) -> None:
    production, candidate = canary
    router = RegistryRouter(engine, cache_s=60)
    first = await arms(router)
    share = sum(v == candidate for v in first.values()) / len(first)
    assert abs(share - 0.20) < 0.025, share
    assert set(first.values()) == {production, candidate}
    assert await arms(router) == first  # the same user keeps the same arm

    route = await router.resolve("assistant", "user-1")
    assert route is not None and route.served_name == route.version
    assert route.base_urls == (("http://127.0.0.1:9002",) if route.version == candidate else
                               ("http://127.0.0.1:9001",))


async def test_two_gateway_processes_agree(engine: Engine, canary: tuple[str, str]) -> None:
    assert await arms(RegistryRouter(engine, 60)) == await arms(RegistryRouter(engine, 60))


async def test_weight_change_is_seen_after_the_cache_and_only_moves_users_to_the_canary(
    engine: Engine, canary: tuple[str, str]
) -> None:
    _production, candidate = canary
    clock = Clock()
    router = RegistryRouter(engine, cache_s=2.0, clock=clock)
    at_20 = await arms(router)
    store.set_canary_weight(engine, candidate, 50, "test", "stage 2")
    clock.now = 1.0
    assert await arms(router) == at_20  # cached: no database read per request
    clock.now = 2.5
    at_50 = await arms(router)
    share = sum(v == candidate for v in at_50.values()) / len(at_50)
    assert abs(share - 0.50) < 0.03, share
    assert all(at_50[u] == candidate for u, v in at_20.items() if v == candidate)


async def test_after_rollback_everyone_is_on_production(engine: Engine, canary: tuple[str, str]) -> None:
    production, candidate = canary
    store.rollback(engine, candidate, "test", "bad")
    assert set((await arms(RegistryRouter(engine, 60))).values()) == {production}


async def test_canary_without_a_server_sends_its_share_to_production(
    engine: Engine, canary: tuple[str, str]
) -> None:
    production, candidate = canary
    deployment = next(d for d in active_deployments(engine)
                      if d.version_id == candidate)
    set_status(engine, deployment.id, DeploymentStatus.failed, "died")
    assert set((await arms(RegistryRouter(engine, 60), USERS[:300])).values()) == {production}


async def test_production_without_a_server_is_a_502_that_says_so(engine: Engine, tmp_path: Path) -> None:
    base_and_candidate(engine, tmp_path)
    with pytest.raises(GatewayError) as caught:
        await RegistryRouter(engine, 0).resolve("assistant", "u")
    assert caught.value.status == 502 and "assistant-v1" in caught.value.detail.message
    assert await RegistryRouter(engine, 0).model_names() == []


async def test_unknown_alias_and_model_names(engine: Engine, canary: tuple[str, str]) -> None:
    router = RegistryRouter(engine, 0)
    assert await router.resolve("nobody", "u") is None
    assert await router.model_names() == ["assistant"]
    composite = CompositeRouter([StaticRouter({"assistant": ["http://static:1"], "other": ["http://o:2"]}), router])
    static = await composite.resolve("assistant", "u")
    assert static is not None and static.base_urls == ("http://static:1",)  # static routes win
    assert await composite.model_names() == ["assistant", "other"]
    assert await CompositeRouter([StaticRouter({}), router]).resolve("assistant", "u") is not None


async def test_store_outage_keeps_the_last_table(engine: Engine, canary: tuple[str, str], tmp_path: Path) -> None:
    clock = Clock()
    router = RegistryRouter(engine, cache_s=1.0, clock=clock)
    before = await arms(router, USERS[:100])
    router.engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")  # no tables: every query fails
    clock.now = 5.0
    assert await arms(router, USERS[:100]) == before
    fresh = RegistryRouter(router.engine, cache_s=1.0)
    with pytest.raises(GatewayError) as caught:
        await fresh.resolve("assistant", "u")
    assert caught.value.status == 503
    router.engine.dispose()


def test_bucket_is_stable_and_uniform() -> None:
    assert canary_bucket("a", "a-v2", "u") == canary_bucket("a", "a-v2", "u")
    buckets = [canary_bucket("a", "a-v2", f"u{i}") for i in range(10_000)]
    assert min(buckets) == 0 and max(buckets) == 99
    assert all(abs(buckets.count(b) - 100) < 45 for b in range(100))


# Requests without `user`: each one is drawn by the weight. 2,000 draws at 20 %: sd 0.9 points, so ±3 points
# is a 3.4-sigma bound; a per-key (or any fixed) sticky hash gives 0 % or 100 % and fails it.
N = 2000


@pytest.mark.parametrize("seed", range(5))
def test_without_user_each_request_is_drawn_by_the_weight(seed: int) -> None:
    rng = random.Random(seed)
    share = sum(choose_canary("a", "a-v2", None, 20, rng) for _ in range(N)) / N
    assert abs(share - 0.20) <= 0.03, share
    assert sum(choose_canary("a", "a-v2", None, 0, rng) for _ in range(N)) == 0
    assert sum(choose_canary("a", "a-v2", None, 100, rng) for _ in range(N)) == N


def test_with_user_the_arm_is_the_sticky_hash_and_ignores_the_rng() -> None:
    class Exploding(random.Random):
        def randrange(self, *args, **kwargs):  # type: ignore[no-untyped-def, override]
            raise AssertionError("a request with a user must not draw")

    rng = Exploding(0)
    for user in ("alice", "bob", "carol"):
        arms = {choose_canary("a", "a-v2", user, 20, rng) for _ in range(50)}
        assert arms == {in_canary("a", "a-v2", user, 20)}


def test_the_draw_is_below_the_weight_and_an_empty_user_is_no_user() -> None:
    class Fixed(random.Random):
        def __init__(self, value: int) -> None:
            super().__init__(0)
            self.value = value

        def randrange(self, *args, **kwargs):  # type: ignore[no-untyped-def, override]
            return self.value

    assert choose_canary("a", "a-v2", None, 20, Fixed(19)) is True
    assert choose_canary("a", "a-v2", None, 20, Fixed(20)) is False
    rng = random.Random(3)
    share = sum(choose_canary("a", "a-v2", "", 20, rng) for _ in range(N)) / N  # "" must not be one shared bucket
    assert abs(share - 0.20) <= 0.03, share


async def test_router_without_user_splits_each_request_by_the_weight(engine: Engine, canary: tuple[str, str]) -> None:
    production, candidate = canary
    router = RegistryRouter(engine, cache_s=60, rng=random.Random(42))
    versions = [(await router.resolve("assistant", None)).version for _ in range(N)]  # type: ignore[union-attr]
    share = versions.count(candidate) / N
    assert abs(share - 0.20) <= 0.03, share
    assert set(versions) == {production, candidate}
    # the same seed gives the same sequence: the injected source is the one used
    again = RegistryRouter(engine, cache_s=60, rng=random.Random(42))
    assert [(await again.resolve("assistant", None)).version for _ in range(N)] == versions  # type: ignore[union-attr]


@pytest.mark.parametrize("weight", [0, 100])
async def test_router_without_user_at_weight_0_and_100(engine: Engine, canary: tuple[str, str], weight: int) -> None:
    production, candidate = canary
    store.set_canary_weight(engine, candidate, weight, "test", f"weight {weight}")
    router = RegistryRouter(engine, cache_s=60, rng=random.Random(5))
    versions = {(await router.resolve("assistant", None)).version for _ in range(N)}  # type: ignore[union-attr]
    assert versions == ({candidate} if weight == 100 else {production})


async def test_router_with_user_is_sticky_and_users_spread_near_the_weight(
    engine: Engine, canary: tuple[str, str]
) -> None:
    production, candidate = canary
    router = RegistryRouter(engine, cache_s=60, rng=random.Random(9))
    for user in USERS[:20]:  # control: one user, 50 calls, one arm (the draw would mix them)
        seen = {(await router.resolve("assistant", user)).version for _ in range(50)}  # type: ignore[union-attr]
        assert seen == {candidate if in_canary("assistant", candidate, user, 20) else production}
    share = sum(v == candidate for v in (await arms(router)).values()) / len(USERS)
    assert abs(share - 0.20) < 0.025, share
