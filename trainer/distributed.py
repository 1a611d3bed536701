"""The processes one run trains in: one, or several started together by `accelerate launch` (trainer/launch.py).

With several, every rank trains (DDP: each optimizer step averages the ranks' gradients) but only rank 0 owns
the run directory: it takes the partial directory's lock and writes its bookkeeping, saves the adapter and
publishes the run. The other ranks train into the same partial directory (the Trainer writes their per-rank
checkpoint files there) and return the run rank 0 published.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from trainer.config import ConfigError
from trainer.rundir import PartialRun, open_partial

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's place among the run's processes (index 0 of 1 when training alone)."""

    index: int = 0
    count: int = 1

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def share(self, value: T) -> T:
        """Rank 0's `value`, on every rank (the others pass a placeholder); a barrier as well."""
        if self.count == 1:
            return value
        import torch.distributed as dist

        objects: list[Any] = [value]
        dist.broadcast_object_list(objects, src=0)
        return objects[0]

    @contextlib.contextmanager
    def partial_run(self, runs_root: Path, key: str, *, resume: bool) -> Iterator[PartialRun]:
        """The run's partial directory: opened (locked, stale checkpoints cleared) by rank 0 alone, and handed to
        the others only once it is ready, so no rank writes a checkpoint into a directory being cleared."""
        if self.count == 1:
            with open_partial(runs_root, key, resume=resume) as partial:
                yield partial
            return
        if self.is_main:
            with open_partial(runs_root, key, resume=resume) as partial:
                self.share(dataclasses.astuple(partial))
                yield partial
            return
        path, run_id, attempt, started_at = self.share(None)
        yield PartialRun(path=Path(path), run_id=run_id, attempt=attempt, started_at=started_at)


def join_ranks(processes: int, device: str) -> Ranks:
    """Join the process group `accelerate launch` set up for this run (accelerate reads the launcher's
    environment); a run of one process joins nothing."""
    if processes == 1:
        return Ranks()
    from accelerate import PartialState

    # The state the Trainer builds too (use_cpu decides gloo over NCCL); building it here first gives the rank
    # before the run directory is opened, and sets this rank's GPU as the current CUDA device.
    state = PartialState(cpu=device == "cpu")
    if state.num_processes != processes:
        raise ConfigError(
            "processes",
            f"{processes} processes need `accelerate launch` (trainer.launch.train_in_subprocess, `tuneloop train "
            f"--processes {processes}`); this process is in a group of {state.num_processes}",
        )
    return Ranks(index=state.process_index, count=state.num_processes)
