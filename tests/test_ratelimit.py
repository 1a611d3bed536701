"""Per-key rate limits (rpm, tpm): OpenAI's 429 and x-ratelimit-* headers through the real gateway, one budget
across gateways on one Redis, fail-open when Redis is down, and the `tuneloop keys` commands."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from typer.testing import CliRunner

from core.api_keys import Scope, create_key, list_keys, revoke_key, set_limits
from core.db import make_engine
from gateway.auth import Principal
from gateway.errors import GatewayError
from gateway.ratelimit import RateLimiter, Window, format_duration, usage_tokens
from tests.gateway_helpers import RunningGateway, closed_port_url, running_gateway
from tuneloop.cli import app as cli_app

DURATION = re.compile(r"(\d+h)?(\d+m)?(\d+(\.\d+)?s|\d+ms)")  # OpenAI's reset format: 20ms, 1s, 6m0s
CACHE_BOUND_S = 10.0  # the auth cache refreshes a key within 2 s (gateway.auth); generous for a loaded CI box


@pytest.fixture
def gateway(upstream_url, sqlite_url, tmp_path):
    with running_gateway(sqlite_url, tmp_path, {"fake": [upstream_url]}) as gw:
        yield gw


def _key(gw: RunningGateway, rpm: int | None = None, tpm: int | None = None) -> tuple[str, str]:
    public, plain = create_key(gw.engine, Scope.app, "limited", rpm=rpm, tpm=tpm)
    return public.id, plain


def _ask(gw: RunningGateway, key: str, model: str = "fake") -> Any:
    """One non-streamed chat completion (the fake upstream's usage: 8 tokens); the raw response, parsed."""
    raw = gw.client(key).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hello"}]
    )
    raw.parse()
    return raw


def _poll(attempt: Callable[[], Any], bound_s: float = CACHE_BOUND_S) -> Any:
    """Retry `attempt` while it is refused with 429, up to `bound_s` (a key's new limits arrive with the cache)."""
    deadline = time.monotonic() + bound_s
    while True:
        try:
            return attempt()
        except openai.RateLimitError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _in_one_minute(scenario: Callable[[], None]) -> None:
    """Run a scenario on the memory counters, whose windows are clock minutes. The sliding-window counter weighs
    the previous minute by its overlap (gateway.ratelimit), so exact counts can shift by one across a minute
    boundary: a run that failed while straddling one is run again (with fresh keys); any other failure stands."""
    for attempt in (1, 2):
        minute = time.time() // 60
        try:
            scenario()
            return
        except (Exception, pytest.fail.Exception):
            if attempt == 2 or time.time() // 60 == minute:
                raise


def _limit_headers(headers: Any) -> dict[str, str]:
    return {name: value for name, value in headers.items() if name.startswith("x-ratelimit-")}


def test_rpm_refuses_the_request_past_the_limit_with_openai_429(gateway):
    def scenario() -> None:
        logged = gateway.count()
        _id, key = _key(gateway, rpm=3)
        remaining = []
        for _ in range(3):
            raw = _ask(gateway, key)
            assert raw.headers["x-ratelimit-limit-requests"] == "3"
            assert DURATION.fullmatch(raw.headers["x-ratelimit-reset-requests"])
            assert "x-ratelimit-limit-tokens" not in raw.headers  # only the limits the key has
            remaining.append(raw.headers["x-ratelimit-remaining-requests"])
        assert remaining == ["2", "1", "0"]

        with pytest.raises(openai.RateLimitError) as refused:
            _ask(gateway, key)
        error = refused.value
        assert error.status_code == 429
        assert error.body["type"] == "requests" and error.body["code"] == "rate_limit_exceeded"
        assert "Limit 3, Used 3" in error.body["message"]
        headers = error.response.headers
        assert 1 <= int(headers["retry-after"]) <= 60
        assert headers["x-ratelimit-limit-requests"] == "3" and headers["x-ratelimit-remaining-requests"] == "0"
        assert DURATION.fullmatch(headers["x-ratelimit-reset-requests"])
        assert headers["x-request-id"]
        assert gateway.count() == logged + 3  # the refused request reached neither the upstream nor the log

        # control: the same request with other keys passes
        unlimited = _ask(gateway, gateway.app_key)
        assert _limit_headers(unlimited.headers) == {}
        _other_id, other = _key(gateway, rpm=3)
        assert _ask(gateway, other).headers["x-ratelimit-remaining-requests"] == "2"

    _in_one_minute(scenario)


def test_tpm_used_up_by_one_answer_refuses_the_next_request(gateway):
    def scenario() -> None:
        _id, key = _key(gateway, tpm=5)
        first = _ask(gateway, key)  # admitted with the window empty; its answer uses 8 tokens
        assert first.headers["x-ratelimit-limit-tokens"] == "5"
        assert first.headers["x-ratelimit-remaining-tokens"] == "5"
        assert "x-ratelimit-limit-requests" not in first.headers

        with pytest.raises(openai.RateLimitError) as refused:
            _ask(gateway, key)
        error = refused.value
        assert error.body["type"] == "tokens" and error.body["code"] == "rate_limit_exceeded"
        assert "Limit 5, Used 8" in error.body["message"]  # counted in full, past the limit
        headers = error.response.headers
        assert headers["x-ratelimit-remaining-tokens"] == "0" and int(headers["retry-after"]) >= 1
        assert DURATION.fullmatch(headers["x-ratelimit-reset-tokens"])

        # control: a key with room passes the same request twice, and sees the first answer's 8 tokens counted
        _roomy_id, roomy = _key(gateway, tpm=100)
        assert _ask(gateway, roomy).headers["x-ratelimit-remaining-tokens"] == "100"
        assert _ask(gateway, roomy).headers["x-ratelimit-remaining-tokens"] == "92"

    _in_one_minute(scenario)


def test_tpm_counts_a_streamed_answers_usage(gateway):
    def scenario() -> None:
        _id, key = _key(gateway, tpm=10)

        def probe() -> openai.RateLimitError | None:
            """Admitted or refused before routing: an unknown model is answered 404 once admitted, adds no tokens."""
            try:
                _ask(gateway, key, model="nope")
            except openai.NotFoundError:
                return None
            except openai.RateLimitError as exc:
                return exc
            raise AssertionError("the probe was answered 200")

        assert probe() is None  # control: under the limit the same probe is admitted
        stream = gateway.client(key).chat.completions.create(
            model="fake", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "w0 w1 w2 w3 w4 "
        # the stream's usage (10 tokens, asked for by the gateway) is added as the stream ends, just after [DONE]
        deadline = time.monotonic() + 5.0
        while (refused := probe()) is None:
            assert time.monotonic() < deadline, "the streamed answer's tokens were never counted"
            time.sleep(0.02)
        assert refused.body["type"] == "tokens" and "Used 10" in refused.body["message"]

    _in_one_minute(scenario)


def test_changed_limits_apply_after_the_key_cache_refresh(gateway):
    def scenario() -> None:
        raised_id, raised = _key(gateway, rpm=2)
        freed_id, freed = _key(gateway, rpm=1)
        _ask(gateway, raised)
        _ask(gateway, raised)
        _ask(gateway, freed)
        for key in (raised, freed):
            with pytest.raises(openai.RateLimitError):
                _ask(gateway, key)

        assert set_limits(gateway.engine, raised_id, rpm=4) is not None
        assert set_limits(gateway.engine, freed_id, rpm=None) is not None
        started = time.monotonic()
        after = _poll(lambda: _ask(gateway, raised))
        # the 2 requests made under the old limit still count (refused ones never do): 3 of 4 used
        assert after.headers["x-ratelimit-limit-requests"] == "4"
        assert after.headers["x-ratelimit-remaining-requests"] == "1"
        unlimited = _poll(lambda: _ask(gateway, freed))
        assert _limit_headers(unlimited.headers) == {}
        assert time.monotonic() - started < CACHE_BOUND_S
        assert _ask(gateway, raised).headers["x-ratelimit-remaining-requests"] == "0"
        with pytest.raises(openai.RateLimitError):
            _ask(gateway, raised)

    _in_one_minute(scenario)


def test_feedback_counts_against_rpm(gateway):
    def scenario() -> None:
        _id, key = _key(gateway, rpm=2)
        response_id = _ask(gateway, key).parse().id

        def rate(with_key: str) -> httpx.Response:
            return httpx.post(gateway.url + "/v1/feedback", json={"response_id": response_id, "rating": "up"},
                              headers={"Authorization": f"Bearer {with_key}"})

        first = rate(key)
        assert first.status_code == 200, first.text
        assert first.headers["x-ratelimit-remaining-requests"] == "0"
        second = rate(key)
        assert second.status_code == 429
        assert second.json()["error"]["type"] == "requests" and int(second.headers["retry-after"]) >= 1
        assert rate(gateway.admin_key).status_code == 200  # control: the same rating from an unlimited key

    _in_one_minute(scenario)


async def test_limiters_on_one_redis_share_one_budget(redis_space):
    a = RateLimiter(redis_space.url, key_prefix=redis_space.prefix)
    b = RateLimiter(redis_space.url, key_prefix=redis_space.prefix)
    key = Principal("key_shared", Scope.app, rpm=4)
    seen = [(await limiter.admit(key))["x-ratelimit-remaining-requests"] for limiter in (a, b, a, b)]
    assert seen == ["3", "2", "1", "0"]  # one count, whichever process answered
    for limiter in (a, b):
        with pytest.raises(GatewayError) as refused:
            await limiter.admit(key)
        assert refused.value.status == 429 and refused.value.detail.type == "requests"

    tokens = Principal("key_tokens", Scope.app, tpm=5)
    await a.admit(tokens)
    await a.add_tokens(tokens, 8)
    with pytest.raises(GatewayError) as refused:
        await b.admit(tokens)
    assert refused.value.detail.type == "tokens"

    # control: the same sequence on two memory limiters (two processes without Redis) is not one budget
    m1, m2 = RateLimiter(), RateLimiter()
    for limiter in (m1, m2, m1, m2):
        await limiter.admit(key)
    assert int((await m1.admit(key))["x-ratelimit-remaining-requests"]) >= 1  # m1 has seen 3 of them, not 5
    for limiter in (a, b, m1, m2):
        await limiter.close()


async def test_redis_limiter_under_concurrency_counts_every_request(redis_space, caplog):
    """redis-py's default pool refuses past 100 concurrent commands ("Too many connections"), which would fail
    open under load: the limiter's pool waits for a connection instead."""
    caplog.set_level(logging.WARNING, logger="tuneloop.gateway")
    limiter = RateLimiter(redis_space.url, key_prefix=redis_space.prefix)
    key = Principal("key_busy", Scope.app, rpm=300)
    results = await asyncio.gather(*(limiter.admit(key) for _ in range(300)), return_exceptions=True)
    assert [r for r in results if not isinstance(r, dict) or not r] == []  # all counted, none failed open
    assert not [r for r in caplog.records if "fail open" in r.getMessage()]
    with pytest.raises(GatewayError):  # control: the 301st is refused, so the 300 were counted
        await limiter.admit(key)
    await limiter.close()


@pytest.mark.postgres
def test_two_gateways_on_one_redis_share_one_budget(upstream_url, pg_url, tmp_path, redis_space):
    upstreams = {"fake": [upstream_url]}
    with (running_gateway(pg_url, tmp_path / "a", upstreams, redis_url=redis_space.url) as one,
          running_gateway(pg_url, tmp_path / "b", upstreams, redis_url=redis_space.url) as two):
        key_id, key = _key(one, rpm=4)  # one database: both gateways know the key
        redis_space.patterns.append(f"tuneloop:*{key_id}*")  # the gateways' prefix; the key id is this test's
        seen = [_ask(gw, key).headers["x-ratelimit-remaining-requests"] for gw in (one, two, one, two)]
        assert seen == ["3", "2", "1", "0"]
        for gw in (one, two):
            with pytest.raises(openai.RateLimitError):
                _ask(gw, key)
        other_id, other = _key(one, rpm=4)  # control: another key on the same Redis is unaffected
        redis_space.patterns.append(f"tuneloop:*{other_id}*")
        assert _ask(two, other).headers["x-ratelimit-remaining-requests"] == "3"


def test_redis_down_fails_open_with_a_warning(upstream_url, sqlite_url, tmp_path, caplog):
    """Decision (gateway.ratelimit): a Redis outage lets requests through unlimited and logs a warning; it
    must not turn into a gateway outage. Control: the same key on a working limiter is refused."""
    caplog.set_level(logging.WARNING, logger="tuneloop.gateway")
    upstreams = {"fake": [upstream_url]}
    down_url = closed_port_url().replace("http://", "redis://") + "/0"
    with (running_gateway(sqlite_url, tmp_path / "down", upstreams, redis_url=down_url) as down,
          running_gateway(sqlite_url, tmp_path / "memory", upstreams) as working):
        def scenario() -> None:
            _id, key = _key(down, rpm=1)
            _ask(working, key)
            with pytest.raises(openai.RateLimitError):
                _ask(working, key)
            for _ in range(3):
                assert _limit_headers(_ask(down, key).headers) == {}

        _in_one_minute(scenario)
    warnings = [r.getMessage() for r in caplog.records if "fail open" in r.getMessage()]
    assert warnings and "redis://127.0.0.1" in warnings[0]
    assert len(warnings) == 1  # one line per interval, not one per request


async def test_limiter_with_redis_down_admits_and_skips_it_for_a_while(caplog):
    caplog.set_level(logging.WARNING, logger="tuneloop.gateway")
    limiter = RateLimiter(closed_port_url().replace("http://", "redis://") + "/0")
    key = Principal("key_down", Scope.app, rpm=1, tpm=1)
    assert await limiter.admit(key) == {}
    assert await limiter.admit(key) == {}  # not asked again within RETRY_S: counted as passed unchecked
    await limiter.add_tokens(key, 100)  # does not raise
    assert limiter.passed_unlimited == 1
    assert len([r for r in caplog.records if "fail open" in r.getMessage()]) == 1
    await limiter.close()


def test_keys_commands_set_and_change_limits(sqlite_url, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path))
    monkeypatch.setenv("TUNELOOP_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()
    engine = make_engine(sqlite_url)

    def stored() -> tuple[int | None, int | None]:
        key = next(k for k in list_keys(engine) if k.name == "limited")
        return key.rpm, key.tpm

    created = runner.invoke(cli_app, ["keys", "create", "--name", "limited", "--rpm", "5", "--tpm", "100"])
    assert created.exit_code == 0, created.output
    assert stored() == (5, 100) and "rpm 5, tpm 100" in created.output
    key_id = next(k.id for k in list_keys(engine) if k.name == "limited")

    changed = runner.invoke(cli_app, ["keys", "limits", key_id, "--rpm", "0", "--tpm", "50"])
    assert changed.exit_code == 0, changed.output
    assert stored() == (None, 50)  # --rpm 0: unlimited
    only_tpm = runner.invoke(cli_app, ["keys", "limits", key_id, "--tpm", "7"])
    assert only_tpm.exit_code == 0 and stored() == (None, 7)  # an omitted limit is unchanged
    listed = runner.invoke(cli_app, ["keys", "list"])
    assert listed.exit_code == 0 and re.search(rf"{key_id}.*limited.*app\s.*-\s.*\b7\b", listed.output)

    for bad in (["keys", "limits", key_id, "--rpm", "-1"], ["keys", "limits", key_id, "--tpm", "1.5"],
                ["keys", "limits", key_id, "--rpm", "many"], ["keys", "limits", key_id],
                ["keys", "create", "--rpm", "-3"], ["keys", "create", "--tpm", "abc"]):
        result = runner.invoke(cli_app, bad)
        assert result.exit_code == 2, (bad, result.output)
        assert isinstance(result.exception, SystemExit), (bad, result.exception)  # a usage error, no traceback
    assert stored() == (None, 7)
    assert len(list_keys(engine)) == 1  # the refused creates made nothing

    missing = runner.invoke(cli_app, ["keys", "limits", "key_nope", "--rpm", "1"])
    assert missing.exit_code == 1 and isinstance(missing.exception, SystemExit)
    assert "no active key key_nope" in missing.output
    engine.dispose()


def test_key_limits_are_checked_where_they_are_stored(sqlite_engine):
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError):
            create_key(sqlite_engine, Scope.app, rpm=bad)  # type: ignore[arg-type]
    public, _plain = create_key(sqlite_engine, Scope.app, rpm=3)
    with pytest.raises(ValueError):
        set_limits(sqlite_engine, public.id, tpm=0)
    updated = set_limits(sqlite_engine, public.id, tpm=9)
    assert updated is not None and (updated.rpm, updated.tpm) == (3, 9)
    assert revoke_key(sqlite_engine, public.id)
    assert set_limits(sqlite_engine, public.id, rpm=1) is None  # a revoked key is not changed


def test_reset_format_and_token_window_figures():
    assert [format_duration(s) for s in (0.02, 0, 1, 1.5, 59.9996, 360, 3723)] == \
        ["20ms", "0ms", "1s", "1.5s", "1m0s", "6m0s", "1h2m3s"]
    assert usage_tokens({"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}) == 8
    assert usage_tokens({"prompt_tokens": 5, "completion_tokens": 3}) == 8
    assert usage_tokens(None) == 0
    # this minute holds 8 tokens against a limit of 5: wait for it to end (40 s), then for 3/8 of a minute
    over = Window(previous=0, previous_ttl=0.0, current=8, current_ttl=100.0)
    assert over.used == 8 and over.admits_in(5) == pytest.approx(40 + 22.5) and over.reset_in() == 100.0
    # last minute's 10 tokens, half still in the window, plus 2 now: 7 used; under 5 once 3 of them aged out
    decaying = Window(previous=10, previous_ttl=30.0, current=2, current_ttl=90.0)
    assert decaying.used == 7 and decaying.admits_in(5) == pytest.approx(12.0)
    assert decaying.admits_in(8) == 0.0
