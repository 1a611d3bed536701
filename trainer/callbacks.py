"""Trainer callbacks: a rich progress bar, throughput/memory measurement, and the bitsandbytes CPU guard."""

from __future__ import annotations

import resource
import sys
import time
from typing import Any

import torch
from transformers import TrainerCallback


class RichProgressCallback(TrainerCallback):
    """One rich progress bar over optimizer steps, with the latest train and eval loss in its description."""

    def __init__(self) -> None:
        self._progress: Any = None
        self._task: Any = None
        self._last = ""

    def on_train_begin(self, args, state, control, **kwargs):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("[bold]train[/]"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            TextColumn("{task.description}"), transient=False,
        )  # fmt: skip
        self._progress.start()
        self._task = self._progress.add_task("", total=state.max_steps, completed=state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if self._progress is not None:
            self._progress.update(self._task, completed=state.global_step, description=self._last)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        parts = [f"{key} {logs[key]:.4f}" for key in ("loss", "eval_loss") if key in logs]
        if parts and self._progress is not None:
            self._last = f"epoch {state.epoch or 0:.1f}  " + "  ".join(parts)
            self._progress.update(self._task, description=self._last)

    def on_train_end(self, args, state, control, **kwargs):
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class ThroughputCallback(TrainerCallback):
    """Tokens per second over optimizer steps only (eval and checkpoint saving excluded) and peak memory."""

    def __init__(self) -> None:
        self.step_seconds: list[float] = []
        self.tokens = 0
        self._step_started = 0.0
        self._tokens_at_start = 0
        self._tokens_at_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._tokens_at_start = state.num_input_tokens_seen

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_started = time.perf_counter()
        self._tokens_at_step = state.num_input_tokens_seen

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.step_seconds.append(time.perf_counter() - self._step_started)
        self.tokens = state.num_input_tokens_seen - self._tokens_at_start

    def summary(self) -> dict[str, Any]:
        seconds = sum(self.step_seconds)
        return {
            "tokens_trained": self.tokens,
            "step_seconds_total": round(seconds, 3),
            # None when the trainer counts no input tokens (KTO/DPO batches have no single `input_ids`)
            "tokens_per_second": round(self.tokens / seconds, 1) if seconds and self.tokens else None,
            "steps_timed": len(self.step_seconds),
            **peak_memory(),
        }


def peak_memory() -> dict[str, Any]:
    """Peak CUDA memory (allocated, reserved) when on GPU; the process's peak RSS always."""
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is KiB on Linux, bytes on macOS
    out: dict[str, Any] = {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale}
    if torch.cuda.is_available():
        out["peak_cuda_allocated_bytes"] = torch.cuda.max_memory_allocated()
        out["peak_cuda_reserved_bytes"] = torch.cuda.max_memory_reserved()
    return out


class BnbCpuGuardCallback(TrainerCallback):
    """Re-applies the bitsandbytes CPU guard before training and before every eval, and counts the layers."""

    def __init__(self) -> None:
        self.guarded_layers = 0

    def _apply(self, model: Any) -> None:
        from trainer.modeling import guard_bnb_cpu

        if model is not None:
            self.guarded_layers = max(self.guarded_layers, guard_bnb_cpu(model))

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._apply(model)

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        # on_evaluate runs after the eval loop; also guard at step begin so the first eval meets a guarded model.
        self._apply(model)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0:
            self._apply(model)
