"""The cycle runner: one cycle at a time across processes, skips and failures recorded, crash clean-up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.db import make_engine
from deploy.cycle import CycleContext, LeasePolicy, SkipCycle, Step, run_cycle
from deploy.cycle_runs import RunStatus, acquire_lease, get_run, heartbeat, list_runs, release_lease

ROOT = Path(__file__).resolve().parent.parent


def _worker(url: str, alias: str, sleep_s: float, ttl_s: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.cycle_worker", url, alias, str(sleep_s), str(ttl_s)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _wait_for_line(process: subprocess.Popen, text: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if text in line:
            return
        if process.poll() is not None:
            raise AssertionError(f"worker exited: {process.stderr.read()}")
    raise AssertionError(f"worker never printed {text!r}")


def test_lease_is_exclusive_and_expires(any_db_url):
    engine = make_engine(any_db_url)
    assert acquire_lease(engine, "x", "a", ttl_s=0.5)
    assert not acquire_lease(engine, "x", "b", ttl_s=0.5)
    assert acquire_lease(engine, "x", "a", ttl_s=0.5)  # re-entrant for its holder
    assert heartbeat(engine, "x", "a", ttl_s=0.5)
    time.sleep(0.7)
    assert acquire_lease(engine, "x", "b", ttl_s=5)  # expired: taken over
    assert not heartbeat(engine, "x", "a", ttl_s=5)
    release_lease(engine, "x", "a")  # not the holder: no effect
    assert not acquire_lease(engine, "x", "a", ttl_s=5)
    release_lease(engine, "x", "b")
    assert acquire_lease(engine, "x", "a", ttl_s=5)


def test_two_processes_one_cycle(any_db_url):
    first = _worker(any_db_url, "demo", sleep_s=4, ttl_s=10)
    _wait_for_line(first, "prepared")
    second = _worker(any_db_url, "demo", sleep_s=0, ttl_s=10)
    second_out, _ = second.communicate(timeout=60)
    first_out, _ = first.communicate(timeout=60)
    second_run = json.loads(second_out.strip().splitlines()[-1])
    first_run = json.loads(first_out.strip().splitlines()[-1])
    assert second_run["status"] == "skipped" and "lease" in second_run["reason"]
    assert first_run["status"] == "succeeded"
    runs = list_runs(make_engine(any_db_url), "demo")
    assert sorted(str(r.status) for r in runs) == ["skipped", "succeeded"]


def test_skip_and_failure_are_recorded(sqlite_url):
    engine = make_engine(sqlite_url)
    cleaned: list[int] = []

    def too_small(ctx: CycleContext) -> dict:
        raise SkipCycle("only 3 new examples (minimum 20)")

    skipped = run_cycle(engine, "demo", [Step("curate", too_small), Step("train", lambda c: {"never": 1})])
    assert skipped.status == RunStatus.skipped and "only 3 new examples" in skipped.reason
    assert [(s.name, str(s.status)) for s in skipped.steps] == [("curate", "skipped")]

    def boom(ctx: CycleContext) -> dict:
        ctx.remember(version_id="demo-v2")
        raise RuntimeError("CUDA out of memory")

    failed = run_cycle(engine, "demo", [Step("curate", lambda c: {"n_train": 40}), Step("train", boom)],
                       cleanup=lambda e, run: cleaned.append(run.id))
    assert failed.status == RunStatus.failed and "CUDA out of memory" in failed.error
    assert failed.version_id == "demo-v2" and cleaned == [failed.id]
    assert failed.steps[0].figures == {"n_train": 40} and "Traceback" in failed.steps[1].error


def test_killed_cycle_is_cleaned_up_by_the_next_start(any_db_url):
    engine = make_engine(any_db_url)
    victim = _worker(any_db_url, "demo", sleep_s=60, ttl_s=2)
    _wait_for_line(victim, "prepared")
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    dead = list_runs(engine, "demo")[0]
    assert dead.status == RunStatus.running  # nobody has noticed yet
    time.sleep(2.5)  # its lease expires
    cleaned = []
    fresh = run_cycle(engine, "demo", [Step("noop", lambda c: {})],
                      cleanup=lambda e, run: cleaned.append((run.id, run.figures["state"]["version_id"])))
    assert fresh.status == RunStatus.succeeded
    assert cleaned == [(dead.id, "demo-v9")]
    assert get_run(engine, dead.id).status == RunStatus.abandoned


def test_lease_policy_validation():
    with pytest.raises(ValueError, match="heartbeat_s"):
        LeasePolicy(ttl_s=10, heartbeat_s=20)


def test_cleanup_rejects_an_ungated_candidate_of_a_dead_cycle(sqlite_url, tmp_path, demo_model_dir):
    from deploy.cycle_steps import cleanup_run
    from deploy.launcher import Launcher
    from registry import store
    from registry.models import ModelVersionCreate

    engine = make_engine(sqlite_url)
    store.register_base(engine, "demo", str(demo_model_dir))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    candidate = store.register_candidate(engine, ModelVersionCreate(
        alias="demo", base_model=str(demo_model_dir), adapter_path=str(adapter)))

    def register_then_die(ctx: CycleContext) -> dict:
        ctx.remember(version_id=candidate.id)
        raise RuntimeError("killed")

    launcher = Launcher(engine, tmp_path, python="/bin/false")
    run = run_cycle(engine, "demo", [Step("register", register_then_die)], cleanup=cleanup_run(launcher))
    assert run.status == RunStatus.failed
    rejected = store.get_version(engine, candidate.id)
    assert rejected.status == "rejected" and "died before its gate" in store.audit_log(engine, "demo")[-1].reason
    # a run that never registered anything leaves the registry alone
    before = len(store.audit_log(engine, "demo"))
    run_cycle(engine, "demo", [Step("curate", lambda c: (_ for _ in ()).throw(RuntimeError("x")))],
              cleanup=cleanup_run(launcher))
    assert len(store.audit_log(engine, "demo")) == before
