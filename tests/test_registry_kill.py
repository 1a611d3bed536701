"""A process SIGKILLed in the middle of registry transitions leaves the old or the new state, never a mix."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.db import make_engine
from registry import store
from registry.models import ModelVersionCreate, VersionStatus

PASSED = {"passed": True, "reasons": ["ok"], "figures": {}}

# Runs in the child. Mode "pause": promote once, stopping inside the transaction (after every write, before
# the commit) until killed. Mode "loop": run whole lifecycles until killed.
CHILD = r'''
import sys, time
from pathlib import Path
from registry import store
from registry.models import ModelVersionCreate
from core.db import make_engine

url, mode, version_id, ready, work = sys.argv[1:6]
engine = make_engine(url)
if mode == "pause":
    original = store._write_audit
    def paused(*args, **kwargs):
        original(*args, **kwargs)
        Path(ready).write_text("inside the transaction")
        time.sleep(120)
    store._write_audit = paused
    store.promote(engine, version_id, "child", "killed mid-promotion")
    sys.exit(3)

n = 0
Path(ready).write_text("started")
while True:
    n += 1
    path = Path(work) / f"loop-{n}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"w%d" % n)
    version = store.register_candidate(engine, ModelVersionCreate(alias="assistant", base_model="b",
                                                                  merged_path=str(path)))
    store.record_gate(engine, version.id, {"passed": True, "reasons": ["ok"], "figures": {}})
    store.start_canary(engine, version.id, 10, "child", "loop")
    store.set_canary_weight(engine, version.id, 50, "child", "loop")
    if n % 3 == 0:
        store.rollback(engine, "assistant", "child", "loop")
    else:
        store.promote(engine, version.id, "child", "loop")
        if n % 4 == 0:
            store.rollback(engine, "assistant", "child", "loop")
'''


def _checkpoint(root: Path, name: str) -> str:
    path = root / name
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(name.encode())
    return str(path)


def _spawn(tmp_path: Path, url: str, mode: str, version_id: str = "-") -> tuple[subprocess.Popen, Path]:
    script, ready = tmp_path / "child.py", tmp_path / f"ready-{mode}"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    child = subprocess.Popen([sys.executable, str(script), url, mode, version_id, str(ready), str(tmp_path / "w")],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return child, ready


def _wait_for(path: Path, child: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if child.poll() is not None:
            raise AssertionError(f"child exited early: {child.stdout.read().decode() if child.stdout else ''}")
        if time.monotonic() > deadline:
            child.kill()
            raise AssertionError("child never got ready")
        time.sleep(0.02)


def _kill(child: subprocess.Popen) -> None:
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL


def _registry_with_canary(url: str, tmp_path: Path) -> tuple:
    engine = make_engine(url)
    store.register_base(engine, "assistant", _checkpoint(tmp_path, "base"))
    candidate = store.register_candidate(engine, ModelVersionCreate(
        alias="assistant", base_model="b", merged_path=_checkpoint(tmp_path, "c2")))
    store.record_gate(engine, candidate.id, PASSED)
    store.start_canary(engine, candidate.id, 25, "test", "setup")
    return engine, candidate.id


def test_kill_inside_a_promotion_keeps_the_old_state(any_db_url: str, tmp_path: Path) -> None:
    engine, canary = _registry_with_canary(any_db_url, tmp_path)
    before = (store.get_alias_state(engine, "assistant"), store.list_versions(engine), store.audit_log(engine))
    child, ready = _spawn(tmp_path, any_db_url, "pause", canary)
    _wait_for(ready, child)  # the child has written statuses, pointers and audit row, and not committed
    _kill(child)
    after = (store.get_alias_state(engine, "assistant"), store.list_versions(engine), store.audit_log(engine))
    assert after == before
    assert store.get_aliases(engine, "assistant") == ("assistant-v1", canary, 25)
    assert store.consistency_problems(engine) == []
    # The dead process's lock is gone: the same promotion now goes through.
    store.promote(engine, canary, "test", "after the crash")
    assert store.get_aliases(engine, "assistant") == (canary, None, 0)
    assert store.consistency_problems(engine) == []
    engine.dispose()


@pytest.mark.parametrize("seed", [1, 2])
def test_kill_at_a_random_moment_of_a_transition_loop(any_db_url: str, tmp_path: Path, seed: int) -> None:
    engine, _ = _registry_with_canary(any_db_url, tmp_path)
    store.promote(engine, "assistant-v2", "test", "setup")
    child, ready = _spawn(tmp_path, any_db_url, "loop")
    _wait_for(ready, child)
    entries_at_start = len(store.audit_log(engine))
    deadline = time.monotonic() + 60
    while len(store.audit_log(engine)) < entries_at_start + 12 and time.monotonic() < deadline:
        time.sleep(0.05)  # let a few lifecycles commit first
    time.sleep(random.Random(seed).uniform(0.0, 0.3))
    _kill(child)
    assert len(store.audit_log(engine)) > entries_at_start
    assert store.consistency_problems(engine) == []
    production = [v for v in store.list_versions(engine) if v.status == VersionStatus.production]
    assert len(production) == 1
    # And the registry keeps working after the crash.
    survivor = store.register_candidate(engine, ModelVersionCreate(
        alias="assistant", base_model="b", merged_path=_checkpoint(tmp_path, "after")))
    store.record_gate(engine, survivor.id, PASSED)
    if store.get_aliases(engine, "assistant")[1] is not None:
        store.rollback(engine, "assistant", "test", "clear the interrupted canary")
    store.start_canary(engine, survivor.id, 10, "test", "after the crash")
    store.promote(engine, survivor.id, "test", "after the crash")
    assert store.consistency_problems(engine) == []
    engine.dispose()
