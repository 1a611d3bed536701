"""What a run records about its environment so it can be reproduced: libraries, code revision, device."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Any

LIBRARIES = (
    "torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate", "tokenizers",
    "safetensors", "liger-kernel",
)  # fmt: skip
REPO_ROOT = Path(__file__).resolve().parent.parent


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def code_revision(repo: Path = REPO_ROOT) -> dict[str, Any]:
    """The git commit the trainer ran from and whether the tree had uncommitted changes."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def device_description(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"type": device, "torch_threads": torch.get_num_threads(), "machine": platform.machine()}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(name=props.name, total_memory_bytes=props.total_memory, cuda=torch.version.cuda)
    else:
        info["processor"] = platform.processor() or platform.machine()
    return info


def loss_curve(log_history: list[dict[str, Any]]) -> dict[str, list[dict[str, float]]]:
    """Train and eval loss points (step, epoch, loss) from the Trainer's log history."""
    train, evaluation = [], []
    for entry in log_history:
        point = {"step": entry.get("step"), "epoch": entry.get("epoch")}
        if "loss" in entry:
            train.append({**point, "loss": entry["loss"]})
        if "eval_loss" in entry:
            evaluation.append({**point, "loss": entry["eval_loss"]})
    return {"train": train, "eval": evaluation}
