"""Production shape: `tuneloop serve --workers 2` and `tuneloop worker` on the real PostgreSQL, one gateway worker
killed with SIGKILL under concurrent load (streamed and not). Every answer that reached its client, a 200 or any
streamed byte, has exactly one row, and no request has two; the other gateway worker keeps answering.

Real processes: the gateway as the CLI starts it, a fake OpenAI-compatible upstream (a thread here) whose
streams drip a chunk every 50 ms so the kill lands mid-answer, and the official `openai` client as the load.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import psutil
import pytest
from sqlalchemy import text

from core.api_keys import Scope, create_key
from core.db import make_engine, migrate
from deploy.vllm import free_port
from tests.fake_upstream import UpstreamState, make_fake_upstream
from tests.servers import serve

pytestmark = pytest.mark.postgres

WORDS = 30  # a stream: 30 chunks, 50 ms apart (~1.5 s)
FULL_TEXT = "".join(f"w{i} " for i in range(WORDS))
CONCURRENCY = 24  # requests in flight; two streams for each buffered request
STREAMS_IN_FLIGHT_AT_KILL = 8
AFTER_KILL = 2 * CONCURRENCY  # requests started after the kill: the surviving worker answers them
MAX_REQUESTS = 1000  # the load runs until the kill landed and AFTER_KILL more; this only bounds a failure
# `tuneloop serve --workers 2`, run as `python -c` rather than through the console script: a spawned worker
# re-imports the script's main module, all of tuneloop.cli (7 s on this 2-core machine under load), before it can
# answer uvicorn's 5 s health ping, and the supervisor kills and respawns it, over and over.
SERVE = [sys.executable, "-c", "from tuneloop.cli import app; app()", "serve", "--workers", "2"]


@dataclass
class Outcome:
    """What one client saw."""

    marker: str
    stream: bool
    status: int | None = None  # the HTTP status, once the status line arrived
    request_id: str | None = None  # x-request-id: the row's primary key
    chunks: int = 0
    text: str = ""
    completed: bool = False  # the whole answer arrived (a stream: up to its end)
    error: str | None = None


def _poll(condition: Callable[[], object], what: str, timeout_s: float = 30.0, every_s: float = 0.02) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"not reached within {timeout_s} s: {what}")


def _workers(serve_pid: int) -> list[int]:
    """uvicorn's worker processes: the multiprocessing spawn children of the serve process."""
    children = psutil.Process(serve_pid).children()
    return [child.pid for child in children if "spawn_main" in " ".join(child.cmdline())]


def _established(pid: int, port: int) -> int:
    """Connections the worker has accepted on the gateway port and not closed: its requests in flight (the load
    opens one connection per request)."""
    try:
        connections = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.NoSuchProcess:
        return 0
    return sum(1 for c in connections if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED)


@pytest.fixture
def upstream() -> Iterator[tuple[str, UpstreamState]]:
    state = UpstreamState()
    with serve(make_fake_upstream(state, words=WORDS, gap_s=0.05)) as url:
        yield url, state


@pytest.fixture
def gateway_processes(pg_url: str, upstream, tmp_path: Path):  # type: ignore[no-untyped-def]
    """`tuneloop serve --workers 2` on a migrated PostgreSQL database: (url, serve pid, worker pids, port, app key)."""
    url, _state = upstream
    migrate(pg_url)
    engine = make_engine(pg_url)
    _public, app_key = create_key(engine, Scope.app, "load")
    engine.dispose()
    port = free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("TUNELOOP_")}
    env.update(TUNELOOP_DATABASE_URL=pg_url, TUNELOOP_HOME=str(tmp_path / "home"), TUNELOOP_PORT=str(port),
               TUNELOOP_ADMIN_KEY="tl-admin-processes", TUNELOOP_UPSTREAMS=f'{{"fake": ["{url}"]}}')
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        serve_process = subprocess.Popen(SERVE, env=env, stdout=log, stderr=subprocess.STDOUT)
    # and the worker process beside them, as in production: it leads, schedules and shares the database
    worker_log = tmp_path / "worker.log"
    with worker_log.open("wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "tuneloop.cli", "worker"], stdout=log,
                                  stderr=subprocess.STDOUT, env={**env, "TUNELOOP_WORKER__METRICS_PORT": "0"})
    started: list[psutil.Process] = []  # psutil checks a process's start time: never a reused pid
    try:
        _poll(lambda: "is the leader" in worker_log.read_text(), "the worker process leading", timeout_s=60,
              every_s=0.1)
        base = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            assert serve_process.poll() is None, f"tuneloop serve exited: {log_path.read_text()[-3000:]}"
            try:
                return httpx.get(base + "/health", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        _poll(healthy, "the gateway answering /health", timeout_s=60, every_s=0.1)
        workers = _poll(lambda: len(w := _workers(serve_process.pid)) == 2 and w, "two worker processes")
        started.extend(psutil.Process(pid) for pid in workers)  # type: ignore[union-attr]
        yield base, serve_process.pid, workers, port, app_key
        assert worker.poll() is None, worker_log.read_text()[-3000:]  # the worker ran through it all
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        with contextlib.suppress(psutil.NoSuchProcess):  # respawned workers too
            started.extend(psutil.Process(serve_process.pid).children())
        serve_process.terminate()  # uvicorn's parent stops its workers on SIGTERM
        try:
            serve_process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            serve_process.kill()
            serve_process.wait()
        for process in started:  # any worker the parent left behind: only the ones this test started
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()


async def _one(client: openai.AsyncOpenAI, outcome: Outcome) -> None:
    messages = [{"role": "user", "content": f"question {outcome.marker}"}]
    try:
        raw = await client.chat.completions.with_raw_response.create(
            model="fake", messages=messages, user=outcome.marker, stream=outcome.stream)  # type: ignore[call-overload]
        outcome.status, outcome.request_id = raw.status_code, raw.headers.get("x-request-id")
        if not outcome.stream:
            outcome.text = raw.parse().choices[0].message.content or ""
            outcome.completed = True
            return
        async for chunk in raw.parse():
            outcome.chunks += 1
            outcome.text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
        outcome.completed = True
    except (openai.APIError, httpx.HTTPError) as exc:  # the killed worker's clients: reset or cut short
        outcome.error = type(exc).__name__


async def _load(base: str, app_key: str, outcomes: list[Outcome], killed: threading.Event) -> None:
    """Keep CONCURRENCY requests in flight until the kill landed and AFTER_KILL more were started (a worker that
    took long to start serving only delays the kill)."""
    # one connection per request, so the kernel spreads the requests over both workers as they come
    limits = httpx.Limits(max_connections=CONCURRENCY * 2, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=30) as http:
        client = openai.AsyncOpenAI(base_url=base + "/v1", api_key=app_key, max_retries=0, http_client=http)
        gate = asyncio.Semaphore(CONCURRENCY)
        tasks: list[asyncio.Task[None]] = []
        kill_index: int | None = None

        async def limited(outcome: Outcome) -> None:
            try:
                await _one(client, outcome)
            finally:
                gate.release()

        while len(outcomes) < MAX_REQUESTS and (kill_index is None or len(outcomes) < kill_index + AFTER_KILL):
            await gate.acquire()
            if kill_index is None and killed.is_set():
                kill_index = len(outcomes)
            outcome = Outcome(f"load-{len(outcomes)}", stream=len(outcomes) % 3 != 0)
            outcomes.append(outcome)
            tasks.append(asyncio.create_task(limited(outcome)))
        await asyncio.gather(*tasks)


def _kill_when_mid_flight(outcomes: list[Outcome], workers: list[int], port: int, killed: threading.Event) -> int:
    """Once enough streams are mid-answer and both workers hold requests, SIGKILL the busier worker."""

    def ready() -> int | None:
        in_flight = sum(1 for o in list(outcomes) if o.stream and o.chunks and not o.completed and not o.error)
        held = {pid: _established(pid, port) for pid in workers}
        if in_flight >= STREAMS_IN_FLIGHT_AT_KILL and all(n >= 2 for n in held.values()):
            return max(held, key=held.__getitem__)
        return None

    try:
        victim = _poll(ready, f"{STREAMS_IN_FLIGHT_AT_KILL} streams mid-answer on both workers", timeout_s=45)
        os.kill(victim, signal.SIGKILL)  # type: ignore[arg-type]
        return victim  # type: ignore[return-value]
    finally:
        killed.set()  # also when it never came: the load stops


@pytest.mark.slow
async def test_killing_one_gateway_worker_loses_no_answered_row_and_duplicates_none(gateway_processes, pg_url):
    base, _serve_pid, workers, port, app_key = gateway_processes
    outcomes: list[Outcome] = []
    killed = threading.Event()
    load = asyncio.create_task(_load(base, app_key, outcomes, killed))
    try:
        victim = await asyncio.to_thread(_kill_when_mid_flight, outcomes, workers, port, killed)
    finally:
        await asyncio.wait_for(load, timeout=60)
    survivor = next(pid for pid in workers if pid != victim)

    # control: the kill landed mid-answer (else this test proves nothing), and the other worker still serves
    cut = [o for o in outcomes if o.stream and o.chunks and not o.completed]
    assert cut, "no stream was cut by the kill"
    assert psutil.pid_exists(survivor) and _gone(victim)
    async with openai.AsyncOpenAI(base_url=base + "/v1", api_key=app_key, max_retries=0) as fresh:
        after = await fresh.chat.completions.create(model="fake", messages=[{"role": "user", "content": "after"}])
    assert after.choices[0].message.content == " ".join(f"w{i}" for i in range(WORDS))

    engine = make_engine(pg_url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id, end_user, status, response_text FROM interactions "
                                 "WHERE end_user LIKE 'load-%'")).all()
    engine.dispose()
    by_id = {row.id: row for row in rows}
    markers = [row.end_user for row in rows]
    assert len(markers) == len(set(markers)), "a request was logged twice"
    answered = [o for o in outcomes if o.status == 200 or o.chunks]
    missing = [o for o in answered if o.request_id not in by_id]
    assert not missing, f"{len(missing)} answers reached their client without a row: {missing[:3]}"
    for outcome in answered:
        row = by_id[outcome.request_id]
        assert row.end_user == outcome.marker
        if outcome.completed:  # a finished answer's row is final and holds what the client got
            assert row.status == "ok" and row.response_text == outcome.text
    assert {by_id[o.request_id].status for o in cut} <= {"in_progress", "ok"}  # the victim never finished them
    assert any(by_id[o.request_id].status == "in_progress" for o in cut)
    served = [o for o in outcomes if o.completed]
    assert len(served) + len([o for o in outcomes if o.error]) == len(outcomes)
    assert len(served) > AFTER_KILL // 2  # most of those started after the kill were answered
    assert all(o.text.strip() == FULL_TEXT.strip() for o in served)


def _gone(pid: int) -> bool:
    """Dead: reaped by its parent, or a zombie it has not reaped yet."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
