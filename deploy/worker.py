"""The worker process's leadership: of any number of workers sharing the store, exactly one - the leader - runs
the scheduler (cycles, canary watches, vLLM supervision); the others stand by.

Leadership is a lease row (the table the cycle's lease uses). The leader renews it every third of its TTL; a
standby tries to take it every poll and wins once it has expired, so a leader that died (kill -9, a lost machine)
is replaced within the TTL after its last heartbeat plus one poll - at once when the standby runs on the same
machine and sees the leader's process gone. A leader that cannot renew (the store unreachable) steps down -
stops its scheduler - before its lease could expire, so two schedulers never run together; jobs also check
leadership as they start (deploy/scheduler.py), and the cycle has its own lease.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Engine

from deploy.cycle_runs import acquire_lease, heartbeat, make_holder, release_lease

log = logging.getLogger("tuneloop.worker")

LEADER_LEASE = "scheduler-leader"


@dataclass(frozen=True)
class LeaderPolicy:
    """The leader lease's timing, derived from its TTL."""

    ttl_s: float

    def __post_init__(self) -> None:
        if self.ttl_s <= 0:
            raise ValueError("ttl_s: must be > 0")

    @property
    def renew_s(self) -> float:
        return self.ttl_s / 3

    @property
    def poll_s(self) -> float:
        """How often a standby tries to take over (and the loop's tick)."""
        return min(1.0, self.ttl_s / 10)

    @property
    def step_down_s(self) -> float:
        """Unrenewed this long, the leader stops its scheduler: well before anyone else may take the lease."""
        return self.ttl_s * 0.8


class Leadership:
    """Takes and keeps the leader lease, starting the scheduler on taking it and stopping it on losing it.

    `start_jobs` builds and starts the leader's scheduler (it runs only while this process leads); `announce`
    is told of each change in a line an operator can read (the CLI prints it)."""

    def __init__(self, engine: Engine, policy: LeaderPolicy, start_jobs: Callable[[], BackgroundScheduler],
                 announce: Callable[[str], None] = log.info, holder: str | None = None) -> None:
        self.engine = engine
        self.policy = policy
        self.start_jobs = start_jobs
        self.announce = announce
        self.holder = holder or make_holder("worker-" + uuid.uuid4().hex[:8])
        self._leading = threading.Event()
        self._scheduler: BackgroundScheduler | None = None
        self._renewed_at = 0.0
        self._drained = threading.Event()  # the last scheduler's running jobs have all ended
        self._drained.set()

    def leading(self) -> bool:
        """Whether jobs may run now: leading, and renewed recently enough that nobody else can hold the lease
        (a renewal stuck on the store ends the lead on its own, before the step-down is even noticed)."""
        return self._leading.is_set() and time.monotonic() - self._renewed_at < self.policy.step_down_s

    def run(self, stop: threading.Event) -> None:
        """Until `stop` is set: lead when possible, renew while leading; then step down and free the lease."""
        self.announce(f"worker {self.holder} standing by for the leader lease (ttl {self.policy.ttl_s:g} s)")
        try:
            while True:
                self.tick()
                if stop.wait(self.policy.poll_s):
                    break
        finally:
            self._step_down("stopping")
            try:
                release_lease(self.engine, LEADER_LEASE, self.holder)
            except Exception:  # the store is gone: the lease simply expires
                log.exception("releasing the leader lease failed")

    def tick(self) -> None:
        now = time.monotonic()
        if not self._leading.is_set():
            if not self._drained.is_set():
                return  # never lead again while jobs of the last lead still run (they would run twice)
            if self._try(lambda: acquire_lease(self.engine, LEADER_LEASE, self.holder, self.policy.ttl_s)):
                self._renewed_at = now
                self._lead()
            return
        if now - self._renewed_at < self.policy.renew_s:
            return
        renewed = self._try(lambda: heartbeat(self.engine, LEADER_LEASE, self.holder, self.policy.ttl_s))
        if renewed:
            self._renewed_at = now
        elif renewed is False:
            self._step_down("the leader lease was taken by another worker")
        elif now - self._renewed_at >= self.policy.step_down_s:
            self._step_down(f"the leader lease could not be renewed for {now - self._renewed_at:.0f} s")

    def _try(self, call: Callable[[], bool]) -> bool | None:
        """The lease call's answer, or None when the store could not be reached (tried again next tick)."""
        try:
            return call()
        except Exception as exc:
            log.warning("leader lease: store unreachable: %s", exc)
            return None

    def _lead(self) -> None:
        self._leading.set()
        try:
            self._scheduler = self.start_jobs()
        except Exception:
            log.exception("starting the scheduler failed; giving up the lead")
            self._step_down("the scheduler did not start")
            self._try(lambda: release_lease(self.engine, LEADER_LEASE, self.holder) or True)
            return
        self.announce(f"worker {self.holder} is the leader")
        for job in self._scheduler.get_jobs():
            self.announce(f"scheduled: {job.name} (next run {job.next_run_time})")

    def _step_down(self, why: str) -> None:
        if not self._leading.is_set():
            return
        self._leading.clear()  # first: a job that starts from now on sees it and does nothing
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            # No new job starts; the running ones end on their own (a cycle notices its lost lease), and until
            # they have, this process does not lead again.
            self._drained.clear()

            def drain() -> None:
                scheduler.shutdown(wait=True)
                self._drained.set()

            threading.Thread(target=drain, name="scheduler-drain", daemon=True).start()
        self.announce(f"worker {self.holder} stepped down: {why}")
