"""What the per-key rate limiter adds to one request: `admit` + `add_tokens`, with limits far from triggering.

    .venv/bin/python benchmarks/ratelimit_cost.py [--prefill 100000] [--requests 20000] [--redis-url redis://...]
    .venv/bin/python benchmarks/ratelimit_cost.py --strategies   # why rpm: moving window, tpm: sliding counter

The key has rpm=1,000,000 and tpm=1,000,000,000; `--prefill` requests (8 tokens each) are put in its window
first. Between two requests the event loop turns once, as in a server (limits' memory storage does its expiry in
a background task, which a tight loop would never run); that turn alone costs ~2 us and is included. Prints
microseconds per request (mean and p99).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter

from core.api_keys import Scope
from gateway.auth import Principal
from gateway.ratelimit import RateLimiter


async def measure(url: str, prefill: int, requests: int, rpm: int | None, tpm: int | None) -> str:
    limiter = RateLimiter(url, key_prefix=f"tlbench-{uuid.uuid4().hex[:8]}")
    key = Principal("key_bench", Scope.app, rpm=rpm, tpm=tpm)
    for i in range(prefill):
        await limiter.admit(key)
        await limiter.add_tokens(key, 8)
        if i % 100 == 0:
            await asyncio.sleep(0)
    samples = []
    for _ in range(requests):
        started = time.perf_counter()
        await limiter.admit(key)
        await limiter.add_tokens(key, 8)
        await asyncio.sleep(0)
        samples.append(time.perf_counter() - started)
    if not url.startswith("memory"):
        await limiter.storage.reset()  # this run's prefixed keys only
    await limiter.close()
    mean = statistics.fmean(samples) * 1e6
    p99 = statistics.quantiles(samples, n=100)[98] * 1e6
    return (f"{url.split(':')[0]:6s} rpm={rpm} tpm={tpm} after {prefill} in window: "
            f"{mean:6.1f} us mean, {p99:6.1f} us p99")


async def strategies() -> None:
    """The `limits` strategies alone on the memory storage: hit + window stats at a 1M/min limit, by fill, with
    and without an event-loop turn between requests."""
    item = RateLimitItemPerMinute(1_000_000)
    for cls in (MovingWindowRateLimiter, SlidingWindowCounterRateLimiter):
        for fill in (0, 10_000, 100_000, 900_000):
            figures = []
            for turn in (False, True):
                limiter = cls(MemoryStorage())
                for i in range(fill):
                    await limiter.hit(item, "key")
                    if i % 100 == 0:
                        await asyncio.sleep(0)
                started = time.perf_counter()
                for _ in range(2000):
                    await limiter.hit(item, "key")
                    await limiter.get_window_stats(item, "key")
                    if turn:
                        await asyncio.sleep(0)
                figures.append((time.perf_counter() - started) / 2000 * 1e6)
            print(f"{cls.__name__:32s} {fill:>7} in window: {figures[0]:6.1f} us tight loop, "
                  f"{figures[1]:6.1f} us with a loop turn")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefill", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--redis-url", default="")
    parser.add_argument("--strategies", action="store_true", help="compare the limits strategies instead")
    args = parser.parse_args()
    if args.strategies:
        await strategies()
        return
    urls = ["memory://"] + ([args.redis_url] if args.redis_url else [])
    for url in urls:
        for rpm, tpm in ((None, None), (1_000_000, None), (None, 1_000_000_000), (1_000_000, 1_000_000_000)):
            print(await measure(url, args.prefill, args.requests, rpm, tpm))


if __name__ == "__main__":
    asyncio.run(main())
