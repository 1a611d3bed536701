"""Training and merging in a child process: its own memory, a time limit, a log file, and no orphan.

`train_in_subprocess(config, dataset_dir, timeout_s=..., log_path=...)` returns what `trainer.train.train` returns;
`merge_in_subprocess(run_dir, out, ...)` what `trainer.merge.merge_adapter` returns. The child
(`python -m trainer.run_child`) writes the run directory itself and a small result file; its stdout and stderr
go to `log_path`, and the config it trains with to `<log stem>.config.json` beside it. With
`config.processes` > 1 (or an `accelerate_config`) the child is `accelerate launch` starting one rank per
process. A failure, a signal or the time limit raises TrainingProcessError with the last lines of the log; on
the time limit the child's whole process group is stopped (SIGTERM, SIGKILL after a grace), and the ranks,
which live in sessions of their own under torchrun, die with their launcher (trainer/run_child.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Any

from trainer.config import TrainConfig
from trainer.train import ADAPTER_DIRNAME, TrainResult

TAIL_LINES = 20
STOP_GRACE_S = 10.0


class TrainingProcessError(RuntimeError):
    """A training or merge child process failed, was killed, or ran past its time limit."""

    def __init__(self, message: str, *, log_path: Path, pid: int, returncode: int | None) -> None:
        super().__init__(message)
        self.log_path = log_path
        self.pid = pid  # also the child's process group id
        self.returncode = returncode


def uses_launcher(config: TrainConfig) -> bool:
    """Whether the run goes through `accelerate launch` rather than a single plain process."""
    return config.processes > 1 or bool(config.accelerate_config)


def launcher_command(config: TrainConfig, child_args: list[str], cpu_count: int | None = None) -> list[str]:
    """`accelerate launch` starting `python -m trainer.run_child <child_args>` once per process."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(config.processes),
               "--num_machines", "1", "--main_process_port", "0"]  # 0: accelerate picks a free port
    if config.accelerate_config:
        command += ["--config_file", str(Path(config.accelerate_config).expanduser().resolve())]
    else:
        # `--multi_gpu` is accelerate's torchrun launcher, one process per rank, on CPUs as well (`--cpu` starts a
        # single process and expects mpirun for more). Each rank's TrainingArguments then picks the backend: NCCL
        # on GPUs, gloo with use_cpu. Mixed precision stays the trainer's own choice (bf16 on capable GPUs).
        command += ["--multi_gpu", "--mixed_precision", "no"]
        if config.device == "cpu" or not _cuda_available():
            threads = max(1, (cpu_count or os.cpu_count() or 1) // config.processes)
            command += ["--num_cpu_threads_per_process", str(threads)]  # the cores shared out, not 1 each
    return [*command, "--module", "trainer.run_child", *child_args]


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def train_in_subprocess(
    config: TrainConfig, dataset_dir: str | Path, *, timeout_s: float | None, log_path: Path,
    grace_s: float = STOP_GRACE_S,
) -> TrainResult:
    """Run `trainer.train.train(config, dataset_dir)` in a child process; None: no time limit."""
    log_path = Path(log_path).resolve()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    config_path = _beside(log_path, "config.json")
    config_path.write_text(json.dumps(config.to_dict(), indent=2))
    result_path = _beside(log_path, "result.json")
    child_args = ["train", str(config_path), str(Path(dataset_dir).resolve()), str(result_path)]
    if uses_launcher(config):
        command = _guarded(["exec", "--", *launcher_command(config, child_args)])
    else:
        command = _guarded(child_args)
    what = f"training ({config.processes} processes)" if config.processes > 1 else "training"
    data = _run(what, command, timeout_s, log_path, result_path, grace_s, "run_dir")
    run_dir = Path(data["run_dir"])
    metadata = json.loads((run_dir / "run.json").read_text())
    return TrainResult(run_dir.name, run_dir, run_dir / ADAPTER_DIRNAME, metadata)


def merge_in_subprocess(
    run_dir: str | Path, out: str | Path, *, timeout_s: float | None, log_path: Path, grace_s: float = STOP_GRACE_S,
) -> Path:
    """Run `trainer.merge.merge_adapter(run_dir, out)` in a child process; None: no time limit."""
    log_path = Path(log_path).resolve()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    result_path = _beside(log_path, "result.json")
    command = _guarded(["merge", str(Path(run_dir).resolve()), str(Path(out).resolve()), str(result_path)])
    return Path(_run("merging", command, timeout_s, log_path, result_path, grace_s, "path")["path"])


def _beside(log_path: Path, suffix: str) -> Path:
    return log_path.with_name(f"{log_path.stem}.{suffix}")


def _guarded(child_args: list[str]) -> list[str]:
    # -u: the log shows progress as it happens, not in 8 KiB blocks.
    return [sys.executable, "-u", "-m", "trainer.run_child", "--parent-pid", str(os.getpid()), *child_args]


def _run(what: str, command: list[str], timeout_s: float | None, log_path: Path, result_path: Path,
         grace_s: float, expected: str) -> dict[str, Any]:
    """The child's result (which must hold `expected`), or TrainingProcessError."""
    result_path.unlink(missing_ok=True)
    with log_path.open("wb") as log:
        # A session of its own: the whole group can be stopped at once, and a terminal's Ctrl-C reaches us only.
        # The child's parent-death signal follows the thread that starts it: this one, which waits for it below.
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        returncode = process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _stop_group(process, grace_s)
        raise TrainingProcessError(
            f"{what} ran past its time limit of {timeout_s:g} s and was stopped; {_tail(log_path)}",
            log_path=log_path, pid=process.pid, returncode=process.returncode) from None
    except BaseException:  # interrupted while waiting: leave nothing running behind us
        _stop_group(process, grace_s)
        raise
    _kill_group(process.pid)  # anything the child left in its group (it is done with it)
    result = _read_result(result_path)
    if returncode != 0 or expected not in result:
        cause = f"exit code {returncode}" if returncode >= 0 else f"killed by {_signal_name(-returncode)}"
        detail = ""
        if "error" in result:
            detail = f": {result['error']}"  # the child's own one-line reason
        elif returncode == 0:
            detail = ": it wrote no result"
        raise TrainingProcessError(f"{what} failed ({cause}){detail}; {_tail(log_path)}",
                                   log_path=log_path, pid=process.pid, returncode=returncode)
    return result


def _stop_group(process: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM to the child's group, SIGKILL to what is left after `grace_s`; reaps the child."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_s)
    _kill_group(process.pid)
    process.wait()


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _read_result(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _signal_name(number: int) -> str:
    try:
        name = signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
    return f"{name} (out of memory?)" if number == signal.SIGKILL else name


def _tail(log_path: Path, lines: int = TAIL_LINES) -> str:
    """The last lines of the log, for the error message (the log itself may be gigabytes)."""
    try:
        with log_path.open("rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - 64 * 1024))
            text = log.read().decode("utf-8", errors="replace")
    except OSError:
        return f"no log at {log_path}"
    last = deque((line for line in text.splitlines() if line.strip()), maxlen=lines)
    if not last:
        return f"the log {log_path} is empty"
    return f"last lines of {log_path}:\n" + "\n".join(last)
