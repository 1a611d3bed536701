"""Run directories: written under a hidden partial name, renamed into place only when complete.

`<runs>/.partial-<key>/` holds checkpoints while training; the key hashes everything that determines the
result (config, resolved defaults, dataset identity, base model), so rerunning the same command after a crash
finds the same partial directory and resumes from its last checkpoint. A killed run therefore never leaves a
half-written `<runs>/<run_id>/`: that name appears by one atomic rename.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.clock import utcnow

PARTIAL_PREFIX = ".partial-"
# Fields that change where or how a run is reported, not what it computes.
NON_IDENTITY_FIELDS = ("resume", "run_name", "output_dir", "report_to")


class RunInProgressError(RuntimeError):
    """Another process is training the identical run right now."""


def run_key(config: dict[str, Any], resolved: dict[str, Any], dataset: dict[str, Any], base_model: str) -> str:
    """A digest of everything that determines a run's result."""
    identity = {
        "config": {k: v for k, v in config.items() if k not in NON_IDENTITY_FIELDS},
        "resolved": resolved,
        "dataset": {"sha256": dataset["sha256"], "files": dataset.get("file_sha256", {})},
        "base_model": base_model,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class PartialRun:
    """A run being trained: its hidden directory, the id it will be published under, its attempt count."""

    path: Path
    run_id: str
    attempt: int
    started_at: str

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def last_checkpoint(self) -> str | None:
        """The newest complete checkpoint; one cut short by a kill lacks trainer_state.json (saved last)."""
        if not self.checkpoints.is_dir():
            return None
        complete = [
            path
            for path in self.checkpoints.glob("checkpoint-*")
            if path.name.split("-")[-1].isdigit() and _readable_json(path / "trainer_state.json")
        ]
        if not complete:
            return None
        return str(max(complete, key=lambda path: int(path.name.split("-")[-1])))


def _readable_json(path: Path) -> bool:
    try:
        json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return True


@contextlib.contextmanager
def open_partial(runs_root: Path, key: str, *, resume: bool) -> Iterator[PartialRun]:
    """The partial directory for `key`, locked against a concurrent identical run for the block's duration."""
    path = runs_root / f"{PARTIAL_PREFIX}{key[:16]}"
    path.mkdir(parents=True, exist_ok=True)
    lock_file = (path / ".lock").open("w")
    try:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunInProgressError(f"an identical run is already training in {path}") from None
        pending_file = path / "pending.json"
        pending = json.loads(pending_file.read_text()) if pending_file.is_file() else {}
        if not resume and (path / "checkpoints").exists():
            shutil.rmtree(path / "checkpoints")
        now = utcnow()
        run_id = pending.get("run_id") or f"{now:%Y%m%d-%H%M%S}-{key[:8]}"
        started_at = pending.get("started_at") or now.isoformat()
        attempt = int(pending.get("attempt", 0)) + 1
        pending_file.write_text(json.dumps({"run_id": run_id, "started_at": started_at, "attempt": attempt}))
        yield PartialRun(path=path, run_id=run_id, attempt=attempt, started_at=started_at)
    finally:
        lock_file.close()


def publish(partial: PartialRun, runs_root: Path, metadata: dict[str, Any]) -> Path:
    """Write run.json, drop the checkpoints and rename the partial directory to `<runs>/<run_id>`."""
    target = runs_root / partial.run_id
    if target.exists():
        # An identical config and dataset already published under this id (same second): keep both.
        target = runs_root / f"{partial.run_id}-{partial.attempt}-{os.getpid()}"
    metadata = {**metadata, "run_id": target.name, "run_dir": str(target.resolve())}
    write_json_atomic(partial.path / "run.json", metadata)
    if partial.checkpoints.exists():
        shutil.rmtree(partial.checkpoints)
    for leftover in ("pending.json", ".lock"):
        (partial.path / leftover).unlink(missing_ok=True)
    os.replace(partial.path, target)
    return target


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def read_run(run_dir_or_adapter: str | Path) -> tuple[Path, Path, dict[str, Any]]:
    """(run_dir, adapter_dir, metadata) from a run directory or its adapter directory."""
    path = Path(run_dir_or_adapter).resolve()
    if (path / "adapter" / "adapter_config.json").is_file():
        run_dir, adapter = path, path / "adapter"
    elif (path / "adapter_config.json").is_file():
        run_dir, adapter = path.parent, path
    else:
        raise FileNotFoundError(f"{path}: neither a run directory nor an adapter directory (no adapter_config.json)")
    run_json = run_dir / "run.json"
    metadata = json.loads(run_json.read_text()) if run_json.is_file() else {}
    return run_dir, adapter, metadata
