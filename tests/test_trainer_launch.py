"""Training and merging in a child process (trainer/launch.py): a result like train()'s, a time limit that stops
the whole process group, the child's own error message, and no orphan when the parent is killed with -9.

Linux-only: processes are looked up in /proc. Polls with deadlines, never sleeps to synchronise.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from trainer.config import TrainConfig
from trainer.data import DatasetError, write_dataset_version
from trainer.demo_task import make_examples
from trainer.launch import TrainingProcessError, merge_in_subprocess, train_in_subprocess
from trainer.train import TrainResult, plan

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _wait_for(condition: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)  # polling interval, not synchronisation: the condition decides
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) from /proc, or None when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def _alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"  # a zombie has exited; only its parent's wait is missing


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat[1] == pid:
                found.append(int(entry.name))
    return found


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("home") / "datasets" / "orders-small"
    return write_dataset_version(root, "orders-small", make_examples(16, seed=1), make_examples(8, seed=2))


def _config(base: Path, runs: Path, **changes) -> TrainConfig:
    return TrainConfig(base_model=str(base), output_dir=str(runs), **{"epochs": 1, **changes})


@pytest.fixture(scope="module")
def child_run(demo_model_dir: Path, dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    work = tmp_path_factory.mktemp("child")
    return train_in_subprocess(_config(demo_model_dir, work / "runs"), dataset_dir, timeout_s=600,
                               log_path=work / "logs" / "train.log")


@pytest.mark.slow
def test_a_run_in_a_child_process_returns_the_published_run(child_run: TrainResult, dataset_dir: Path) -> None:
    assert (child_run.adapter_dir / "adapter_model.safetensors").is_file()
    assert child_run.run_dir.name == child_run.run_id and child_run.adapter_dir == child_run.run_dir / "adapter"
    assert json.loads((child_run.run_dir / "run.json").read_text()) == child_run.metadata
    assert child_run.metadata["status"] == "complete" and child_run.final_eval_loss is not None
    assert child_run.metadata["dataset"]["path"] == str(dataset_dir.resolve())
    assert child_run.metadata["world_size"] == 1 and child_run.metadata["config"]["processes"] == 1
    logs = child_run.run_dir.parent.parent / "logs"
    assert (logs / "train.log").stat().st_size > 0  # the child's output went to its log
    assert json.loads((logs / "train.config.json").read_text())["epochs"] == 1  # the config it was given
    assert sorted(p.name for p in child_run.run_dir.iterdir()) == ["adapter", "run.json"]


@pytest.mark.slow
def test_a_merge_in_a_child_process(child_run: TrainResult, tmp_path: Path) -> None:
    merged = merge_in_subprocess(child_run.run_dir, tmp_path / "merged", timeout_s=600,
                                 log_path=tmp_path / "merge.log")
    assert merged == (tmp_path / "merged").resolve()
    assert json.loads((merged / "merge.json").read_text())["equivalence"]["passed"]
    refused = r"merging failed \(exit code 1\): FileExistsError: .*already exists"
    with pytest.raises(TrainingProcessError, match=refused):
        merge_in_subprocess(child_run.run_dir, merged, timeout_s=600, log_path=tmp_path / "again.log")


def test_a_run_past_its_time_limit_is_stopped_with_its_whole_group(
    demo_model_dir: Path, dataset_dir: Path, tmp_path: Path
) -> None:
    config = _config(demo_model_dir, tmp_path / "runs", epochs=1000)
    started = time.monotonic()
    with pytest.raises(TrainingProcessError) as caught:
        train_in_subprocess(config, dataset_dir, timeout_s=2, log_path=tmp_path / "train.log", grace_s=5)
    assert "training ran past its time limit of 2 s and was stopped" in str(caught.value)
    assert time.monotonic() - started < 60
    _wait_for(lambda: _group_gone(caught.value.pid), 30, f"process group {caught.value.pid} to be gone")
    assert [p.name for p in (tmp_path / "runs").glob("[!.]*")] == []  # nothing published


def test_a_bad_dataset_fails_the_child_with_its_own_message(
    demo_model_dir: Path, tmp_path: Path
) -> None:
    bad = write_dataset_version(tmp_path / "bad", "bad", make_examples(4, seed=1), make_examples(2, seed=2))
    with (bad / "train.jsonl").open("a") as handle:
        handle.write("this is not json\n")
    config = _config(demo_model_dir, tmp_path / "runs")
    with pytest.raises(DatasetError) as in_process:
        plan(config, bad)
    with pytest.raises(TrainingProcessError) as caught:
        train_in_subprocess(config, bad, timeout_s=300, log_path=tmp_path / "train.log")
    message = str(caught.value)
    assert message.startswith(f"training failed (exit code 1): DatasetError: {in_process.value}")
    assert f"last lines of {tmp_path / 'train.log'}" in message
    assert caught.value.returncode == 1


PARENT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from trainer.config import TrainConfig
    from trainer.launch import train_in_subprocess

    base, runs, dataset, log = sys.argv[1:5]
    config = TrainConfig(base_model=base, output_dir=runs, epochs=1000)
    train_in_subprocess(config, dataset, timeout_s=None, log_path=Path(log))
""")


def test_the_child_dies_with_its_parent(demo_model_dir: Path, dataset_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(demo_model_dir), str(tmp_path / "runs"),
                               str(dataset_dir), str(log)])
    child = None
    try:
        child = _wait_for(lambda: next(iter(_children(parent.pid)), None), 60, "the training child")
        # Let the child get going (its log fills once it imports and loads the model).
        _wait_for(lambda: log.is_file() and log.stat().st_size > 0, 120, "the child's log")
        assert _alive(child)
        parent.kill()
        parent.wait(timeout=30)
        _wait_for(lambda: not _alive(child), 30, f"child {child} to exit after its parent was killed")
        assert "Traceback" not in log.read_text()  # killed, not crashed
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if child is not None and _alive(child):
            os.kill(child, signal.SIGKILL)


REPO = Path(__file__).resolve().parent.parent
ACCELERATE_CONFIGS = sorted((REPO / "trainer" / "accelerate").glob("*.yaml"))


def test_the_launcher_command_is_one_accelerate_1x_accepts(tmp_path: Path) -> None:
    from accelerate.commands.launch import launch_command_parser

    from trainer.launch import launcher_command

    child = ["train", "config.json", "dataset", "result.json"]
    ddp = launcher_command(TrainConfig(processes=2, device="cpu"), child, cpu_count=16)
    parsed = launch_command_parser().parse_args(ddp[3:])
    assert ddp[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert parsed.multi_gpu and parsed.num_processes == 2 and parsed.num_machines == 1
    assert parsed.num_cpu_threads_per_process == 8 and parsed.mixed_precision == "no"
    assert parsed.module and parsed.training_script == "trainer.run_child" and parsed.training_script_args == child
    fsdp = launcher_command(TrainConfig(processes=4, accelerate_config=str(ACCELERATE_CONFIGS[0])), child)
    parsed = launch_command_parser().parse_args(fsdp[3:])
    assert parsed.config_file == str(ACCELERATE_CONFIGS[0]) and not parsed.multi_gpu and parsed.num_processes == 4


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_the_example_accelerate_configs_load(path: Path) -> None:
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    loaded = load_config_from_file(str(path))
    assert loaded.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    assert loaded.mixed_precision == "bf16" and loaded.num_machines == 1
    assert TrainConfig(accelerate_config=str(path)).accelerate_config == str(path)


def test_the_cli_refuses_a_bad_process_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from tuneloop.cli import app

    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path))
    write_dataset_version(tmp_path / "datasets" / "tiny", "tiny", make_examples(4, seed=1), make_examples(2, seed=2))
    result = CliRunner().invoke(app, ["train", "--dataset", "tiny", "--processes", "0"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: processes: must be >= 1 (got 0)"
