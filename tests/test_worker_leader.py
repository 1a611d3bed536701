"""Exactly one scheduler leader among the worker processes: the leader runs every job, a standby none; when the
leader dies a standby takes over within the lease's TTL, and no job runs in two places at once."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from sqlmodel import Session

from core.clock import utcnow
from core.db import make_engine
from deploy.cycle_runs import Lease, acquire_lease
from deploy.worker import LEADER_LEASE, LeaderPolicy, Leadership

TTL_S = 3.0


class FakeScheduler(BackgroundScheduler):
    """Stands in for the leader's scheduler in the in-process test: counts starts and stops."""

    def __init__(self, counts: dict[str, int]) -> None:
        super().__init__()
        self.counts = counts
        counts["started"] += 1

    def shutdown(self, wait: bool = True) -> None:
        self.counts["stopped"] += 1


def test_a_standby_takes_over_only_after_the_dead_leaders_lease_expires(any_db_url: str) -> None:
    """The leader on another machine went silent (no heartbeat): its lease must run out before anyone leads."""
    engine = make_engine(any_db_url)
    assert acquire_lease(engine, LEADER_LEASE, "other-machine:4242:worker-gone", TTL_S)
    expires = utcnow().timestamp() + TTL_S
    counts = {"started": 0, "stopped": 0}
    standby = Leadership(engine, LeaderPolicy(TTL_S), lambda: FakeScheduler(counts), announce=lambda _line: None)
    while utcnow().timestamp() < expires - 0.5:
        standby.tick()
        assert not standby.leading() and counts["started"] == 0  # the lease is still the silent leader's
        time.sleep(0.1)
    deadline = time.monotonic() + TTL_S
    while not standby.leading():
        assert time.monotonic() < deadline, "the standby did not take over after the lease expired"
        standby.tick()
        time.sleep(0.1)
    assert counts == {"started": 1, "stopped": 0}
    with Session(engine) as session:
        assert session.get(Lease, LEADER_LEASE).holder == standby.holder
    # losing the lease (taken by someone else after, say, a long pause) stops the scheduler at the next renewal
    with Session(engine) as session:
        lease = session.get(Lease, LEADER_LEASE)
        lease.holder = "other-machine:4343:worker-new"
        session.add(lease)
        session.commit()
    standby._renewed_at -= TTL_S / 2  # due for renewal now
    standby.tick()
    assert not standby.leading()
    deadline = time.monotonic() + 10
    while counts["stopped"] == 0:  # the scheduler is shut down once its running jobs have ended
        assert time.monotonic() < deadline, "the scheduler was not stopped"
        time.sleep(0.05)
    assert counts == {"started": 1, "stopped": 1}
    engine.dispose()


@dataclass
class WorkerProcess:
    process: subprocess.Popen
    lines: list[tuple[float, str]] = field(default_factory=list)

    def read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append((time.time(), line.rstrip("\n")))

    def saw(self, text: str) -> float | None:
        return next((at for at, line in list(self.lines) if text in line), None)

    def jobs(self) -> list[tuple[str, str, float]]:
        """(job, start|end, wall-clock stamp) from the worker's debug log."""
        found = []
        for _at, line in list(self.lines):
            match = re.search(r"job (\S+) (start|end) ([0-9.]+)", line)
            if match:
                found.append((match[1], match[2], float(match[3])))
        return found

    def output(self) -> str:
        return "\n".join(line for _at, line in self.lines[-40:])


def _start_worker(env: dict[str, str]) -> WorkerProcess:
    process = subprocess.Popen([sys.executable, "-m", "tuneloop.cli", "worker", "--log-level", "debug"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    worker = WorkerProcess(process)
    threading.Thread(target=worker.read, daemon=True).start()
    return worker


def _wait(condition, what: str, timeout_s: float, *workers: WorkerProcess):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what}\n" + "\n---\n".join(w.output() for w in workers))
        time.sleep(0.05)
    return value


@pytest.mark.slow
def test_kill_the_leader_and_a_standby_takes_over(pg_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "TUNELOOP_HOME": str(tmp_path), "TUNELOOP_DATABASE_URL": pg_url,
           "TUNELOOP_WORKER__LEADER_TTL_S": str(TTL_S), "TUNELOOP_WORKER__METRICS_PORT": "0",
           "TUNELOOP_WORKER__SUPERVISE_S": "1", "TUNELOOP_CYCLE__CANARY_WATCH_S": "0.3",
           "TUNELOOP_CYCLE__ALIASES": '["demo"]', "TUNELOOP_CYCLE__CRON": "0 3 1 1 *"}
    first = _start_worker(env)
    second = None
    try:
        _wait(lambda: first.saw("is the leader"), "the first worker never led", 60, first)
        second = _start_worker(env)
        _wait(lambda: second.saw("standing by"), "the second worker never started", 60, second)
        _wait(lambda: sum(1 for job, edge, _ in first.jobs() if edge == "end" and job.startswith("canary-watch"))
              >= 3, "the leader ran no canary watch", 60, first)
        assert not second.saw("is the leader") and not second.jobs()  # the standby runs nothing

        first.process.send_signal(signal.SIGKILL)
        killed_at = time.time()
        first.process.wait()
        led_at = _wait(lambda: second.saw("is the leader"), "the standby never took over", TTL_S + 10, second)
        _wait(lambda: any(edge == "end" and job.startswith("canary-watch") for job, edge, _ in second.jobs()),
              "the new leader ran no canary watch", 30, second)
    finally:
        for worker in (first, second):
            if worker is not None and worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
    assert second is not None
    assert second.process.wait(60) == 0, second.output()  # a clean stop

    assert led_at - killed_at <= TTL_S, f"took over {led_at - killed_at:.1f} s after the kill (ttl {TTL_S} s)"
    # no job ran in two places at once: every job of the new leader started after the old one was killed, and
    # the old leader's jobs all ran before that
    old = first.jobs()
    new = second.jobs()
    assert old and new
    assert all(stamp <= killed_at for _job, _edge, stamp in old)
    assert all(stamp >= killed_at for _job, edge, stamp in new if edge == "start")
    assert {job for job, _edge, _stamp in new} >= {"canary-watch:demo", "supervise-servers"}
    engine = make_engine(pg_url)
    with Session(engine) as session:
        assert session.get(Lease, LEADER_LEASE) is None  # released by the clean stop
    engine.dispose()
