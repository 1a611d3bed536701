"""Per-key rate limits, as LiteLLM and OpenAI do them: requests per minute (rpm) and tokens per minute (tpm).

A request is refused (429, OpenAI's body and x-ratelimit-* headers) when the key's rpm window is full or its tpm
window is already used up; after the answer its `usage.total_tokens` is added to the tpm window, in full, even
past the limit (the tokens were spent), so the next request waits until the window has room again.

Counters live in process memory by default ("memory://"), or in Redis through the `limits` package's async
storage when `settings.redis_url` is set, so that several gateway processes share one budget.

In process memory the counter is limits' own arithmetic (MemoryStorage's sliding window, mirrored in
`InProcessCounters`) on a dict, called without awaits: limits' async memory storage cost 22 us per request for
admit + add_tokens (four storage calls, each awaiting its internals, plus its expiry task), and through the
gateway benchmark the limiter raised the server's CPU per proxied request from 246 to 280-321 us at
concurrency 32 (2 CPUs, AMD EPYC, one run each); the dict version costs 9 us, headers included.

Strategy: the sliding-window counter, for both limits, because the moving window is too slow at high limits.
Memory storage, one key, limit 1M/min, hit + window stats per request with an event-loop turn between requests
as in a server (CPython 3.11, 2 CPUs; `benchmarks/ratelimit_cost.py --strategies`), by requests in the window:
  moving window            0: 35 us   10k: 48 us   100k: 163 us   900k: 2,028 us
  sliding-window-counter   0: 14 us   10k: 13 us   100k:  13 us   900k:    13 us
limits' memory moving window keeps one entry per request and expires them in a background task that hops to a
thread and copies the key's list at each loop turn (in a tight loop, where that task never runs, it measures
5-14 us, which hides it); at 100k in the window it would add half of a proxied request's CPU time (296 us,
benchmarks/gateway/RESULTS.md). For tokens it would be worse: one entry per token (in Redis a list LPUSHed per
token), and its acquire refuses an amount past the limit while an answer's tokens must count in full. The
counter is two integers per key whatever the limit and takes any amount. Its approximation: the previous
minute's count is weighted by how much of that minute the window still overlaps, as if spread evenly, so in the
first instants of a new minute a key can get one request past its limit. Memory windows are clock minutes;
Redis windows start at a key's first hit.
Whole cost per request (admit + add_tokens) at rpm=1M and tpm=1G with 100k requests in the window, memory
storage, loop turn (~2 us) included: 25 us mean, 42 us p99 (rpm only 14 us, tpm only 14 us, a key without
limits 2 us, i.e. the turn alone); on a loopback Redis ~450 us wall (4 round trips, mostly waiting).

Headers: x-ratelimit-reset-* is when every request / token counted in the window has aged out (OpenAI's "back to
its initial state"); a refusal's Retry-After is when the window is under its limit again, so a request fits.

Redis down: fail open. A rate limiter protects fairness and cost, not data; turning a Redis outage into a
gateway outage (503 on every request) would be the worse failure. Each failure is logged as a warning (at most
one line per `FAIL_OPEN_LOG_S`, with the count of requests let through since), and for `RETRY_S` after a failure
Redis is not asked at all, so an unreachable host does not add its timeout to every request.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any, NamedTuple, Protocol, cast

from limits import RateLimitItemPerMinute
from limits.aio.storage import SlidingWindowCounterSupport, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string

from gateway.errors import GatewayError

log = logging.getLogger("tuneloop.gateway")

RETRY_S = 1.0  # after a storage failure, requests pass unlimited this long before the storage is tried again
FAIL_OPEN_LOG_S = 10.0
REDIS_TIMEOUT_S = 0.5  # connect and per-command: a hung Redis costs a request at most this (then fails open)
# redis-py's default pool raises "Too many connections" past 100 concurrent commands (seen at 1,000 concurrent
# admits): that would fail open under load. This pool waits for a free connection instead, up to the timeout.
REDIS_POOL_SIZE = 100
REDIS_POOL_WAIT_S = 1.0
WINDOW_S = 60
UNBOUNDED = 2**53  # a limit no window reaches: used to add tokens past the real limit


class LimitedKey(Protocol):
    """What the limiter needs of a principal (gateway.auth.Principal)."""

    key_id: str
    rpm: int | None
    tpm: int | None


class _PerMinute(RateLimitItemPerMinute):
    """Keyed by the API key alone, not by the limit's amount (limits' default), so that changing a key's limit
    keeps what it has already used in the window."""

    def key_for(self, *identifiers: bytes | str | int | float) -> str:
        return "/".join(str(part) for part in identifiers)


@lru_cache(maxsize=4096)
def _per_minute(amount: int) -> _PerMinute:
    return _PerMinute(amount)


class Window(NamedTuple):  # a tuple: built three times per request, a frozen dataclass cost 1 us each
    """A sliding-window counter as the storage holds it (limits' get_sliding_window): the previous minute's count
    and how long it still overlaps the window, the current minute's count and its key's time to live (the
    current minute's rest plus the minute it will then spend as the previous one). Counts requests or tokens."""

    previous: int
    previous_ttl: float
    current: int
    current_ttl: float

    @property
    def used(self) -> int:
        """What the window holds, as the counter weighs it (limits floors the weighted count the same way)."""
        return math.floor(self.previous * self.previous_ttl / WINDOW_S + self.current)

    def reset_in(self) -> float:
        """Seconds until everything counted has aged out: OpenAI's x-ratelimit-reset-*."""
        if self.current:
            return max(0.0, self.current_ttl)
        return max(0.0, self.previous_ttl) if self.previous else 0.0

    def admits_in(self, limit: int) -> float:
        """Seconds until the window is under `limit` again, so that a request is admitted (a Retry-After)."""
        if self.used < limit:
            return 0.0
        if self.current >= limit:  # only once this minute is the previous one, and has decayed below the limit
            return max(0.0, self.current_ttl - WINDOW_S) + WINDOW_S * (1 - limit / self.current)
        return max(0.0, self.previous_ttl - WINDOW_S * (limit - self.current) / self.previous)


def format_duration(seconds: float) -> str:
    """OpenAI's x-ratelimit-reset-* format (Go's time.Duration): "20ms", "1s", "1.5s", "6m0s", "1h2m3s"."""
    ms = max(0, round(seconds * 1000))
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    text = f"{rest / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    return f"{minutes}m{text}" if minutes else text


def limit_headers(kind: str, limit: int, remaining: int, reset_in_s: float) -> dict[str, str]:
    """The x-ratelimit-* headers of one limit; kind is "requests" or "tokens"."""
    return {
        f"x-ratelimit-limit-{kind}": str(limit),
        f"x-ratelimit-remaining-{kind}": str(max(0, remaining)),
        f"x-ratelimit-reset-{kind}": format_duration(max(0.0, reset_in_s)),
    }


def retry_after(reset_in_s: float) -> str:
    """Retry-After in whole seconds, at least 1 (0 would invite an immediate retry that is refused again)."""
    return str(max(1, math.ceil(reset_in_s)))


def rate_limited(kind: str, principal: LimitedKey, limit: int, used: int, reset_in_s: float,
                 headers: dict[str, str]) -> GatewayError:
    """OpenAI's 429: type "requests" or "tokens", code "rate_limit_exceeded", its wording of the message."""
    unit = "requests per min (RPM)" if kind == "requests" else "tokens per min (TPM)"
    wait = retry_after(reset_in_s)
    message = (f"Rate limit reached for key {principal.key_id} on {unit}: Limit {limit}, Used {used}, "
               f"Requested 1. Please try again in {wait}s.")
    return GatewayError(429, message, type=kind, code="rate_limit_exceeded",
                        headers={**headers, "Retry-After": wait})


def usage_tokens(usage: Mapping[str, Any] | None) -> int:
    """total_tokens of an OpenAI `usage` object (prompt + completion when total is missing); 0 without one."""
    if not usage:
        return 0
    total = usage.get("total_tokens")
    if total is None:
        total = (usage.get("prompt_tokens") or 0) + (usage.get("completion_tokens") or 0)
    return total if isinstance(total, int) and total > 0 else 0


def storage_uri(url: str) -> str:
    """"memory://" or a redis URL as given in the settings, as the `limits` async storage scheme."""
    return url if url.startswith("async+") else "async+" + url


def make_storage(url: str, key_prefix: str = "tuneloop") -> Storage:
    uri = storage_uri(url)
    if uri.startswith("async+memory"):
        storage = storage_from_string(uri)
    else:  # redis-py's asyncio client (pinned); limits would default to coredis, which is not installed
        from redis.asyncio import BlockingConnectionPool

        pool = BlockingConnectionPool.from_url(
            uri.removeprefix("async+"), max_connections=REDIS_POOL_SIZE, timeout=REDIS_POOL_WAIT_S,
            socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S,
        )
        storage = storage_from_string(uri, implementation="redispy", key_prefix=key_prefix, wrap_exceptions=True,
                                      connection_pool=pool)
    assert isinstance(storage, Storage)
    return storage


class Counters(Protocol):
    """Sliding-window counters per (API key, kind): read a window; add to it unless that passes `limit`."""

    async def window(self, key_id: str, kind: str) -> Window: ...

    async def hit(self, key_id: str, kind: str, limit: int, amount: int = 1) -> bool: ...


class InProcessCounters:
    """limits' sliding-window counter (the arithmetic of limits.aio.storage.MemoryStorage) on a dict: two
    integers per (API key, kind), so memory is bounded by the number of keys, not by traffic."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._counts: dict[tuple[str, str], tuple[int, int, int]] = {}  # -> (window index, current, previous)

    def _read(self, key: tuple[str, str], now: float) -> tuple[int, Window]:
        index = int(now // WINDOW_S)
        at, current, previous = self._counts.get(key, (index, 0, 0))
        if at != index:  # the stored window has moved on: it is the previous one, or older than that
            current, previous = 0, current if at == index - 1 else 0
        previous_ttl = 0.0 if previous == 0 else (1 - (((now - WINDOW_S) / WINDOW_S) % 1)) * WINDOW_S
        current_ttl = (1 - ((now / WINDOW_S) % 1)) * WINDOW_S + WINDOW_S
        return index, Window(previous, previous_ttl, current, current_ttl)

    async def window(self, key_id: str, kind: str) -> Window:
        return self._read((key_id, kind), self._clock())[1]

    async def hit(self, key_id: str, kind: str, limit: int, amount: int = 1) -> bool:
        key = (key_id, kind)
        index, window = self._read(key, self._clock())
        if amount > limit or window.used + amount > limit:
            return False
        self._counts[key] = (index, window.current + amount, window.previous)
        return True


class StorageCounters:
    """The same counters in a `limits` async storage (Redis), shared by every process that uses it."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.limiter = SlidingWindowCounterRateLimiter(storage)

    async def window(self, key_id: str, kind: str) -> Window:
        key = _per_minute(1).key_for(key_id, kind)  # the key does not depend on the limit
        return Window(*await cast(SlidingWindowCounterSupport, self.storage).get_sliding_window(key, WINDOW_S))

    async def hit(self, key_id: str, kind: str, limit: int, amount: int = 1) -> bool:
        return await self.limiter.hit(_per_minute(limit), key_id, kind, cost=amount)


class RateLimiter:
    """rpm and tpm per API key; `admit` before a request, `add_tokens` after its answer."""

    def __init__(self, url: str = "memory://", key_prefix: str = "tuneloop") -> None:
        self.url = url
        failures: tuple[type[BaseException], ...] = (StorageError, ConnectionError, TimeoutError, OSError)
        self.storage: Storage | None = None
        self.counters: Counters
        if storage_uri(url).startswith("async+memory"):
            self.counters = InProcessCounters()
        else:
            self.storage = make_storage(url, key_prefix)
            self.counters = StorageCounters(self.storage)
            base = self.storage.base_exceptions
            failures += base if isinstance(base, tuple) else (base,)
        self._failures = failures
        self._skip_until = 0.0  # monotonic: storage failed, fail open until then
        self._last_warning = -math.inf
        self.passed_unlimited = 0  # requests let through without a check since the last warning

    async def admit(self, principal: LimitedKey) -> dict[str, str]:
        """Count the request against the key's rpm and check its tpm; return the x-ratelimit-* headers for the
        response, or raise the 429 GatewayError."""
        if principal.rpm is None and principal.tpm is None:
            return {}
        if time.monotonic() < self._skip_until:
            self.passed_unlimited += 1
            return {}
        try:
            return await self._admit(principal)
        except self._failures as exc:
            self._failed("admit", exc)
            return {}

    async def _admit(self, principal: LimitedKey) -> dict[str, str]:
        headers: dict[str, str] = {}
        refusal: GatewayError | None = None
        if principal.tpm is not None:
            tokens = await self.counters.window(principal.key_id, "tpm")
            headers |= limit_headers("tokens", principal.tpm, principal.tpm - tokens.used, tokens.reset_in())
            if tokens.used >= principal.tpm:
                refusal = rate_limited("tokens", principal, principal.tpm, tokens.used,
                                       tokens.admits_in(principal.tpm), headers)
        if principal.rpm is not None:
            # a request refused for its tokens does not use up one of the key's requests
            admitted = refusal is None and await self.counters.hit(principal.key_id, "rpm", principal.rpm)
            requests = await self.counters.window(principal.key_id, "rpm")
            headers |= limit_headers("requests", principal.rpm, principal.rpm - requests.used, requests.reset_in())
            if refusal is None and not admitted:
                refusal = rate_limited("requests", principal, principal.rpm, requests.used,
                                       requests.admits_in(principal.rpm), headers)
        if refusal is not None:
            refusal.headers.update(headers)  # both limits' headers, whichever refused
            raise refusal
        return headers

    async def add_tokens(self, principal: LimitedKey, tokens: int) -> None:
        """Add an answer's tokens to the key's tpm window, in full (past the limit too: they were spent)."""
        if principal.tpm is None or tokens <= 0 or time.monotonic() < self._skip_until:
            return
        try:  # the same window under a limit it never reaches: the counter's hit always lands
            await self.counters.hit(principal.key_id, "tpm", UNBOUNDED, tokens)
        except self._failures as exc:
            self._failed("add_tokens", exc)

    def _failed(self, what: str, exc: BaseException) -> None:
        now = time.monotonic()
        self._skip_until = now + RETRY_S
        if now - self._last_warning >= FAIL_OPEN_LOG_S:
            self._last_warning = now
            log.warning("rate-limit storage %s failed in %s (%s: %s): requests pass unlimited (fail open); "
                        "%d passed unchecked since the last warning", _redact(self.url), what,
                        type(exc).__name__, exc, self.passed_unlimited)
            self.passed_unlimited = 0

    async def close(self) -> None:
        """Close the Redis connections (the memory storage has only its expiry task)."""
        if self.storage is None:
            return
        client = getattr(getattr(self.storage, "bridge", None), "storage", None)
        if client is not None and hasattr(client, "aclose"):
            await client.aclose()
            await client.connection_pool.disconnect()  # a pool passed in is not closed with its client
        timer = getattr(self.storage, "timer", None)
        if isinstance(timer, asyncio.Task) and not timer.done():
            timer.cancel()


def _redact(url: str) -> str:
    """The URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest
