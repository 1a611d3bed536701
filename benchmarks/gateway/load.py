"""Load for the gateway benchmark: wrk (or a Python fallback) for throughput, a raw client for time to first chunk.

Both speak plain HTTP/1.1 over keep-alive connections; the raw client reads the chunked SSE body itself, so
its own overhead is a few microseconds and the same for every target.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


@dataclass
class LoadResult:
    requests: int  # completed, any status
    ok: int  # completed with a 2xx
    errors: int  # socket errors, timeouts, non-2xx
    duration_s: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float = float("nan")  # the answering server's CPU time, user + system

    @property
    def rps(self) -> float:
        return self.ok / self.duration_s if self.duration_s else 0.0


def run_wrk(wrk: str, url: str, conc: int, duration_s: float, body: bytes, key: str, cpu: int) -> LoadResult:
    """One wrk run (1 thread, `conc` connections) pinned to `cpu`; the Lua script prints a JSON summary."""
    env = dict(os.environ, BENCH_BODY=body.decode(), BENCH_KEY=key)
    argv = ["taskset", "-c", str(cpu), wrk, "-t1", f"-c{conc}", f"-d{duration_s:g}s", "--timeout", "10s",
            "-s", str(HERE / "post.lua"), url]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout[-500:]} {done.stderr[-500:]}")
    s = json.loads(line.removeprefix("BENCH_JSON "))
    errors = s["connect_errors"] + s["read_errors"] + s["write_errors"] + s["status_errors"] + s["timeouts"]
    return LoadResult(requests=s["requests"], ok=s["requests"] - s["status_errors"], errors=errors,
                      duration_s=s["duration_us"] / 1e6, p50_ms=s["p50_us"] / 1000, p99_ms=s["p99_us"] / 1000)


class RawConnection:
    """One keep-alive HTTP/1.1 connection: POST, then read a content-length or chunked answer."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port, self.path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    def request_bytes(self, body: bytes, key: str) -> bytes:
        auth = f"authorization: Bearer {key}\r\n" if key else ""
        return (f"POST {self.path} HTTP/1.1\r\nhost: {self.host}:{self.port}\r\ncontent-type: application/json\r\n"
                f"{auth}content-length: {len(body)}\r\n\r\n").encode() + body

    async def post(self, payload: bytes, first_marker: bytes | None = None) -> tuple[int, float | None]:
        """Send `payload` (a whole request); return (status, seconds until `first_marker` appeared)."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        started = time.perf_counter()
        self.writer.write(payload)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (ln.partition(b":") for ln in head.split(b"\r\n")[1:] if ln)}
        first: float | None = None
        if headers.get(b"transfer-encoding") == b"chunked":
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                data = await self.reader.readexactly(size + 2)
                if first is None and first_marker is not None and first_marker in data:
                    first = time.perf_counter() - started
                if size == 0:
                    break
        else:
            await self.reader.readexactly(int(headers.get(b"content-length", b"0")))
        if headers.get(b"connection") == b"close":
            await self.close()
        return status, first

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


async def _python_load(url: str, conc: int, duration_s: float, body: bytes, key: str) -> LoadResult:
    latencies: list[float] = []
    ok = errors = 0
    deadline = time.perf_counter() + duration_s

    async def worker() -> None:
        nonlocal ok, errors
        conn = RawConnection(url)
        payload = conn.request_bytes(body, key)
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                status, _ = await conn.post(payload)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                errors += 1
                await conn.close()
                continue
            latencies.append(time.perf_counter() - started)
            if 200 <= status < 300:
                ok += 1
            else:
                errors += 1
        await conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    pick = (lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000) if latencies else (
        lambda q: float("nan"))
    return LoadResult(len(latencies), ok, errors, elapsed, pick(0.5), pick(0.99))


def run_python_load(url: str, conc: int, duration_s: float, body: bytes, key: str) -> LoadResult:
    """The fallback when wrk cannot be installed: asyncio clients in this (pinned) process."""
    return asyncio.run(_python_load(url, conc, duration_s, body, key))


@dataclass
class FirstChunk:
    samples_ms: dict[str, list[float]]
    ok: dict[str, int]

    def median(self, name: str) -> float:
        return statistics.median(self.samples_ms[name]) if self.samples_ms[name] else float("nan")

    def p90(self, name: str) -> float:
        values = sorted(self.samples_ms[name])
        return values[int(0.9 * (len(values) - 1))] if values else float("nan")


async def _first_chunk(targets: dict[str, tuple[str, str]], body: bytes, n: int) -> FirstChunk:
    conns = {name: RawConnection(url) for name, (url, _key) in targets.items()}
    payloads = {name: conns[name].request_bytes(body, key) for name, (_url, key) in targets.items()}
    samples: dict[str, list[float]] = {name: [] for name in targets}
    ok = dict.fromkeys(targets, 0)
    for i in range(n + 5):  # the first 5 rounds warm up and are not counted
        for name, conn in conns.items():  # alternate: direct, tuneloop, litellm, direct, ...
            status, first = await conn.post(payloads[name], first_marker=b"data:")
            if 200 <= status < 300:
                ok[name] += 1
            if i >= 5 and first is not None and 200 <= status < 300:
                samples[name].append(first * 1000)
            await asyncio.sleep(0.002)  # let a proxy finish its after-stream work (the log row) first
    for conn in conns.values():
        await conn.close()
    return FirstChunk(samples, ok)


def measure_first_chunk(targets: dict[str, tuple[str, str]], body: bytes, n: int) -> FirstChunk:
    """Concurrency 1, streamed: time from sending the request to the first `data:` line, per target."""
    return asyncio.run(_first_chunk(targets, body, n))
