"""The child process of trainer/launch.py: a training run or a merge in a process of its own.

    python -m trainer.run_child [--parent-pid PID] train <config.json> <dataset_dir> <result.json>
    python -m trainer.run_child [--parent-pid PID] merge <run_dir> <out> <result.json>
    python -m trainer.run_child [--parent-pid PID] exec <command...>

`exec` replaces itself with the command (`accelerate launch ...`) once the parent-death guard is set, so that
the launcher, which is not our code, dies with its parent too. The result file gets `{"run_dir": ...}`,
`{"path": ...}` or `{"error": ...}`; progress and tracebacks go to stdout/stderr (the parent's log file).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int | None) -> None:
    """Exit when the process that started us dies, even by kill -9, so no orphan trains on for hours.

    Linux: the kernel sends us SIGKILL (PR_SET_PDEATHSIG, kept across exec). The parent may have died before
    the call: then our parent is no longer `parent_pid` and we leave at once. Elsewhere a thread polls our
    parent id, which changes when the parent dies (not kept across exec)."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if parent_pid is not None and os.getppid() != parent_pid:
            os._exit(1)
        return
    original = parent_pid if parent_pid is not None else os.getppid()

    def watch() -> None:
        while os.getppid() == original:
            threading.Event().wait(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _write_result(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _is_main_rank() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


def _train(args: argparse.Namespace) -> dict[str, Any]:
    from trainer.config import from_mapping
    from trainer.train import train

    config = from_mapping(json.loads(Path(args.config).read_text()))
    result = train(config, args.dataset_dir, progress=False)
    return {"run_dir": str(result.run_dir)}


def _merge(args: argparse.Namespace) -> dict[str, Any]:
    from trainer.merge import merge_adapter

    return {"path": str(merge_adapter(args.run_dir, args.out))}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer.run_child")
    parser.add_argument("--parent-pid", type=int, default=None, help="Exit at once if this is no longer our parent.")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train")
    train.add_argument("config")
    train.add_argument("dataset_dir")
    train.add_argument("result")
    merge = commands.add_parser("merge")
    merge.add_argument("run_dir")
    merge.add_argument("out")
    merge.add_argument("result")
    run = commands.add_parser("exec")
    run.add_argument("argv", nargs=argparse.REMAINDER)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    die_with_parent(args.parent_pid)
    if args.command == "exec":
        argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        os.execv(argv[0], argv)
    result = Path(args.result)
    try:
        data = _train(args) if args.command == "train" else _merge(args)
    except Exception as exc:  # the parent reports this line; the traceback stays in the log
        traceback.print_exc()
        message = f"{type(exc).__name__}: {exc}"
        print(f"error: {message}", file=sys.stderr, flush=True)
        _write_result(result, {"error": message})
        return 1
    if _is_main_rank():
        _write_result(result, data)
    _leave_process_group()
    return 0


def _leave_process_group() -> None:
    """Tear the ranks' process group down while the interpreter is whole: left to exit with it, a gloo rank
    once aborted ("terminate called without an active exception", SIGABRT) after publishing the run; gloo's
    worker threads still held tensors (pytorch/pytorch#179291). Only after success: on failure a peer may be
    stuck in a collective, and torchrun stops the ranks anyway."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
