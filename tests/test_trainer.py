"""Real training runs on the demo model (CPU): learning, metadata, merge equivalence, crash resume, the bnb guard.

Each run is LoRA/QLoRA on the tiny demo Llama with trainer/defaults.py's CPU settings for tiny models (r16/alpha32
on all projections, lr 5e-3, cosine, packed 512); ~30-60 s each on 2 free cores. Quality is asserted, never time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trainer.config import TrainConfig
from trainer.data import write_dataset_version
from trainer.demo_task import format_ok, make_examples
from trainer.evaluate import generate_answers, load_for_generation, rate
from trainer.train import TrainResult, train

pytestmark = pytest.mark.slow

EPOCHS = 10  # the tiny-model default; 6 reached only ~75% adherence with per-digit tokens
REPO = Path(__file__).resolve().parent.parent


def _adherence(model_dir: Path, conversations: list, adapter_dir: Path | None = None) -> tuple[float, list[str]]:
    model, tokenizer = load_for_generation(model_dir, adapter_dir=adapter_dir)
    answers = generate_answers(model, tokenizer, conversations)
    return rate(conversations, answers, lambda _c, answer: format_ok(answer)), answers


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from trainer.demo_model import build_demo_model

    return build_demo_model(tmp_path_factory.mktemp("base") / "demo-base")


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("home") / "datasets" / "orders-v1"
    return write_dataset_version(root, "orders-v1", make_examples(200, seed=1), make_examples(40, seed=2))


@pytest.fixture(scope="module")
def held_out() -> list:
    return [example["messages"] for example in make_examples(40, seed=3)]


def _config(base_dir: Path, runs: Path, **changes) -> TrainConfig:
    return TrainConfig(base_model=str(base_dir), output_dir=str(runs), epochs=EPOCHS, **changes)


@pytest.fixture(scope="module")
def lora_run(base_dir: Path, dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    return train(_config(base_dir, tmp_path_factory.mktemp("runs")), dataset_dir, progress=False)


def test_sft_teaches_the_strict_format(lora_run: TrainResult, base_dir: Path, held_out: list) -> None:
    before, _ = _adherence(base_dir, held_out)
    after, answers = _adherence(base_dir, held_out, adapter_dir=lora_run.adapter_dir)
    assert before <= 0.05, "the random base should not produce the strict format"
    assert after >= 0.9, answers
    curve = lora_run.metadata["loss_curve"]
    assert curve["train"][-1]["loss"] < curve["train"][0]["loss"] / 2
    assert len(curve["eval"]) == EPOCHS  # eval loss once per epoch
    assert curve["eval"][-1]["loss"] < curve["eval"][0]["loss"]


def test_run_metadata_is_complete(lora_run: TrainResult, base_dir: Path, dataset_dir: Path) -> None:
    meta = lora_run.metadata
    assert json.loads((lora_run.run_dir / "run.json").read_text()) == meta
    assert lora_run.adapter_dir == lora_run.run_dir / "adapter" and lora_run.run_id == lora_run.run_dir.name
    assert meta["status"] == "complete" and meta["run_id"] == lora_run.run_id
    assert meta["config"]["epochs"] == EPOCHS and meta["resolved"]["learning_rate"] == 5e-3
    assert meta["resolved"]["device"] == "cpu" and meta["resolved"]["quantization"] == "none"
    manifest = json.loads((dataset_dir / "manifest.json").read_text())
    assert meta["dataset"]["id"] == "orders-v1" and meta["dataset"]["sha256"] == manifest["sha256"]
    assert meta["base_model"]["path"] == str(base_dir.resolve())
    assert torch.__version__.startswith(meta["libraries"]["torch"].split("+")[0])
    assert all(meta["libraries"][name] for name in ("transformers", "peft", "trl", "bitsandbytes"))
    assert "commit" in meta["code"] and meta["device"]["type"] == "cpu"
    throughput = meta["throughput"]
    assert throughput["tokens_per_second"] > 0 and throughput["tokens_trained"] > 0
    assert throughput["peak_rss_bytes"] > 0
    assert meta["wall_seconds"] > 0 and meta["global_step"] > 0 and meta["trainable_parameters"] > 0
    adapter_config = json.loads((lora_run.adapter_dir / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(base_dir.resolve())  # absolute
    assert adapter_config["r"] == 16 and adapter_config["lora_alpha"] == 32
    assert not any(p.name.startswith(".partial-") for p in lora_run.run_dir.parent.iterdir())


def test_merge_is_equivalent_and_self_contained(lora_run: TrainResult, held_out: list, tmp_path: Path) -> None:
    from trainer.merge import merge_adapter

    merged = merge_adapter(lora_run.run_dir, tmp_path / "merged")
    check = json.loads((merged / "merge.json").read_text())
    assert check["method"] == "merge_and_unload" and check["equivalence"]["passed"]
    assert check["equivalence"]["top1_agreement"] == 1.0 and check["equivalence"]["max_abs_diff"] < 1e-3
    assert (merged / "model.safetensors").is_file() and not (merged / "adapter_config.json").exists()
    tokenizer_config = json.loads((merged / "tokenizer_config.json").read_text())
    assert "generation" in (tokenizer_config.get("chat_template") or (merged / "chat_template.jinja").read_text())
    # The merged checkpoint alone answers exactly like base + adapter.
    _, with_adapter = _adherence(Path(lora_run.metadata["base_model"]["path"]), held_out, lora_run.adapter_dir)
    merged_rate, merged_answers = _adherence(merged, held_out)
    assert merged_answers == with_adapter and merged_rate >= 0.9
    with pytest.raises(FileExistsError):
        merge_adapter(lora_run.run_dir, merged)


def test_merge_refuses_when_logits_differ(
    lora_run: TrainResult, base_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trainer.merge as merge_module

    # The check on its own: the untuned base is not equivalent to base + adapter.
    report = merge_module.check_against_adapter(base_dir, lora_run.run_dir)
    assert not report.passed and report.max_abs_diff > report.allowed_abs_diff
    # A merge step that silently loses the adapter (fault injected) is refused and leaves nothing behind.
    monkeypatch.setattr(merge_module, "_merge", lambda model, _adapter, _quantized: model.unload())
    with pytest.raises(merge_module.MergeMismatchError, match="merge refused"):
        merge_module.merge_adapter(lora_run.run_dir, tmp_path / "bad-merge")
    assert list(tmp_path.iterdir()) == []


def test_adapter_export_for_vllm(lora_run: TrainResult, tmp_path: Path) -> None:
    from trainer.merge import export_adapter

    exported = export_adapter(lora_run.adapter_dir, tmp_path / "adapter")
    assert (exported / "adapter_model.safetensors").read_bytes() == (
        lora_run.adapter_dir / "adapter_model.safetensors"
    ).read_bytes()
    config = json.loads((exported / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]).is_absolute()


def _wait_for_checkpoint(runs: Path, process: subprocess.Popen, timeout: float = 600) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(runs.glob(".partial-*/checkpoints/checkpoint-*/trainer_state.json"))
        if found:
            return found[0].parent
        if process.poll() is not None:
            raise AssertionError(f"training exited early: {process.stdout.read() if process.stdout else ''}")
        time.sleep(0.2)
    raise AssertionError("no checkpoint appeared")


def test_resume_after_sigkill_matches_an_uninterrupted_run(
    lora_run: TrainResult, base_dir: Path, dataset_dir: Path, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    overrides = [f"base_model={base_dir}", f"output_dir={runs}", f"epochs={EPOCHS}", "save_steps=8"]
    command = [sys.executable, "-m", "tuneloop.cli", "train", "--dataset", str(dataset_dir), "--quiet"]
    for item in overrides:
        command += ["--set", item]
    env = {**os.environ, "TUNELOOP_HOME": str(tmp_path / "home")}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        checkpoint = _wait_for_checkpoint(runs, process)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert [p.name.startswith(".partial-") for p in runs.iterdir()] == [True]  # nothing published

    config = _config(base_dir, runs, save_steps=8)
    resumed = train(config, dataset_dir, progress=False)
    meta = resumed.metadata
    assert meta["attempts"] == 2 and meta["resumed_from_step"] >= int(checkpoint.name.split("-")[1])
    assert meta["global_step"] == lora_run.metadata["global_step"]
    assert [p.name for p in runs.iterdir()] == [resumed.run_id]  # partial renamed, checkpoints dropped
    assert not (resumed.run_dir / "checkpoints").exists()
    # Same seed, same data: the resumed run ends exactly where the uninterrupted one did.
    ours = load_file(resumed.adapter_dir / "adapter_model.safetensors")
    reference = load_file(lora_run.adapter_dir / "adapter_model.safetensors")
    assert ours.keys() == reference.keys()
    for name, tensor in reference.items():
        torch.testing.assert_close(ours[name], tensor, rtol=0, atol=1e-6, msg=name)


@pytest.fixture(scope="module")
def qlora_runs(base_dir: Path, dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    runs = tmp_path_factory.mktemp("qlora-runs")
    with_eval = train(_config(base_dir, runs, quantization="nf4"), dataset_dir, progress=False)
    without_eval = train(
        _config(base_dir, runs, quantization="nf4", eval_each_epoch=False), dataset_dir, progress=False
    )
    return {"with_eval": with_eval, "without_eval": without_eval}


def test_qlora_on_cpu_with_per_epoch_eval_learns_as_well_as_without(
    qlora_runs: dict, base_dir: Path, held_out: list
) -> None:
    with_eval, without_eval = qlora_runs["with_eval"], qlora_runs["without_eval"]
    for run in (with_eval, without_eval):
        assert run.metadata["resolved"]["quantization"] == "nf4"
        assert run.metadata["bnb_cpu_guarded_layers"] == 4 * 7  # every Linear4bit of the 4 layers
    assert len(with_eval.metadata["loss_curve"]["eval"]) == EPOCHS
    assert without_eval.metadata["final_eval_loss"] is not None  # evaluated once, after training
    rate_with, answers = _adherence(base_dir, held_out, with_eval.adapter_dir)
    rate_without, _ = _adherence(base_dir, held_out, without_eval.adapter_dir)
    assert rate_without >= 0.9
    assert rate_with >= 0.9 and abs(rate_with - rate_without) <= 0.05, answers
    assert with_eval.metadata["final_eval_loss"] <= without_eval.metadata["final_eval_loss"] * 1.05


def test_qlora_dequantize_merge_is_equivalent(qlora_runs: dict, held_out: list, tmp_path: Path) -> None:
    from trainer.merge import merge_adapter

    merged = merge_adapter(qlora_runs["with_eval"].run_dir, tmp_path / "merged")
    check = json.loads((merged / "merge.json").read_text())
    assert check["method"] == "dequantize+merge_and_unload" and check["equivalence"]["passed"]
    assert check["equivalence"]["top1_agreement"] == 1.0
    config = json.loads((merged / "config.json").read_text())
    assert "quantization_config" not in config  # a plain checkpoint any engine can load
    merged_rate, _ = _adherence(merged, held_out)
    assert merged_rate >= 0.9
