"""Fast trainer tests (no training): config validation, per-device defaults, dataset reading, run directories,
the logits comparison behind the merge check, and the CLI's error handling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from trainer.config import ConfigError, TrainConfig, field_help, from_mapping, load_train_config
from trainer.data import DatasetError, load_dataset_version, resolve_dataset_dir, write_dataset_version
from trainer.defaults import Environment, ModelShape, estimate_parameters, resolve
from trainer.demo_task import make_examples
from trainer.merge import compare_logits
from trainer.rundir import open_partial, publish, read_run, run_key

CPU = Environment(cuda_available=False, bf16_supported=False, liger_installed=False)
CUDA = Environment(cuda_available=True, bf16_supported=True, liger_installed=True)
TINY = ModelShape(parameters=1_000_000, hidden_size=128, model_type="llama")
LLAMA_8B_CONFIG = {
    "hidden_size": 4096, "num_hidden_layers": 32, "vocab_size": 128256, "intermediate_size": 14336,
    "num_attention_heads": 32, "num_key_value_heads": 8, "tie_word_embeddings": False, "model_type": "llama",
}  # fmt: skip
REAL = ModelShape(parameters=estimate_parameters(LLAMA_8B_CONFIG), hidden_size=4096, model_type="llama")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (["lora_r=0"], "lora_r"),
        (["lora_alpha=-2"], "lora_alpha"),
        (["lora_dropout=1"], "lora_dropout"),
        (["learning_rate=abc"], "learning_rate"),
        (["learning_rate=0"], "learning_rate"),
        (["learning_rate=3"], "learning_rate"),
        (["quantization=int8"], "quantization"),
        (["device=tpu"], "device"),
        (["lr_scheduler=sawtooth"], "lr_scheduler"),
        (["warmup=1.5"], "warmup"),
        (["epochs=0"], "epochs"),
        (["batch_size=2.5"], "batch_size"),
        (["grad_accumulation=0"], "grad_accumulation"),
        (["max_length=8"], "max_length"),
        (["packing=maybe"], "packing"),
        (["gradient_checkpointing=some"], "gradient_checkpointing"),
        (["target_modules="], "target_modules"),
        (["target_modules=all-linear,q_proj"], "target_modules"),
        (["report_to=neptune"], "report_to"),
        (["seed=-1"], "seed"),
        (["base_model=/no/such/model"], "base_model"),
        (["learning_rat=1e-3"], "learning_rat"),
        (["novalue"], "novalue"),
    ],
)
def test_bad_values_fail_naming_the_field(overrides: list[str], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_train_config(None, overrides)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}:")


def test_misspelt_field_suggests_the_right_one() -> None:
    with pytest.raises(ConfigError, match="did you mean learning_rate"):
        from_mapping({"learning_rat": 1e-3})


def test_uninstalled_tracker_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "wandb" else real_find_spec(name))
    with pytest.raises(ConfigError, match="report_to: 'wandb' needs the wandb package"):
        TrainConfig(report_to=["wandb"])


def test_yaml_with_overrides_coerces_types(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("lora_r: 8\nlearning_rate: 5.0e-3\ntarget_modules: [q_proj, v_proj]\npacking: false\n")
    config = load_train_config(path, ["learning_rate=1e-3", "epochs=2", "assistant_only_loss=no", "batch_size=auto"])
    assert config.lora_r == 8
    assert config.learning_rate == pytest.approx(1e-3)  # the override wins over the file
    assert config.epochs == 2.0 and isinstance(config.epochs, float)
    assert config.target_modules == ["q_proj", "v_proj"]
    assert config.packing is False and config.assistant_only_loss is False
    assert config.batch_size is None


def test_yaml_problems_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_train_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_train_config(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("lora_r: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_train_config(tmp_path / "bad.yaml")


def test_every_field_has_help_text() -> None:
    assert all(text.strip() for text in field_help().values())


def test_replace_revalidates() -> None:
    config = TrainConfig()
    assert config.replace(lora_r=4).lora_r == 4
    with pytest.raises(ConfigError, match="lora_r"):
        config.replace(lora_r=-4)


def test_parameter_estimate_matches_llama_8b() -> None:
    assert 8.0e9 < REAL.parameters < 8.1e9


def test_cpu_defaults_are_plain_fp32_lora_with_a_tiny_model_learning_rate() -> None:
    resolved = resolve(TrainConfig(), CPU, TINY)
    assert (resolved.device, resolved.quantization, resolved.compute_dtype) == ("cpu", "none", "float32")
    assert (resolved.optimizer, resolved.gradient_checkpointing) == ("adamw_torch", "off")
    assert not resolved.liger_kernels
    assert resolved.learning_rate == 5e-3 and resolved.epochs == 10 and resolved.max_length == 512
    assert resolved.tiny_model and not resolved.bf16


def test_cuda_defaults_are_the_qlora_recipe_with_liger() -> None:
    resolved = resolve(TrainConfig(), CUDA, REAL)
    assert (resolved.device, resolved.quantization, resolved.compute_dtype) == ("cuda", "nf4", "bfloat16")
    assert resolved.optimizer == "paged_adamw_8bit" and resolved.liger_kernels and resolved.bf16
    assert resolved.gradient_checkpointing == "full"
    assert resolved.learning_rate == 2e-4 and resolved.epochs == 3 and resolved.max_length == 2048
    assert resolved.batch_size * resolved.grad_accumulation == 16  # the reference recipe's effective batch


def test_real_models_on_cpu_train_one_unpacked_epoch_at_a_higher_rate() -> None:
    resolved = resolve(TrainConfig(), CPU, REAL)
    assert (resolved.learning_rate, resolved.epochs, resolved.batch_size) == (1e-3, 1.0, 8)
    assert resolved.packing is False and resolved.max_length == 512 and not resolved.tiny_model
    assert resolve(TrainConfig(), CPU, TINY).packing is True  # the tiny model's measured recipe packs
    assert resolve(TrainConfig(), CUDA, REAL).packing is True
    assert resolve(TrainConfig(packing=True), CPU, REAL).packing is True  # an explicit choice wins


def test_explicit_values_beat_defaults_and_impossible_choices_fail() -> None:
    resolved = resolve(TrainConfig(quantization="nf4", learning_rate=1e-3, batch_size=2), CPU, TINY)
    assert resolved.quantization == "nf4" and resolved.learning_rate == 1e-3 and resolved.batch_size == 2
    assert resolved.optimizer == "adamw_torch"  # paged optimizers need CUDA
    assert not resolve(TrainConfig(liger_kernels="off"), CUDA, REAL).liger_kernels
    assert not resolve(TrainConfig(), Environment(True, True, liger_installed=False), REAL).liger_kernels
    with pytest.raises(ConfigError, match=r"^device: "):
        resolve(TrainConfig(device="cuda"), CPU, TINY)
    with pytest.raises(ConfigError, match=r"^optimizer: "):
        resolve(TrainConfig(optimizer="paged_adamw_8bit"), CPU, TINY)


def _write_demo_dataset(root: Path, name: str = "ds-1") -> Path:
    return write_dataset_version(root / name, name, make_examples(6, seed=1), make_examples(2, seed=2))


def test_dataset_version_reads_by_id_or_path_and_ignores_extra_keys(tmp_path: Path) -> None:
    home = tmp_path / "home"
    directory = _write_demo_dataset(home / "datasets")
    with (directory / "train.jsonl").open("a") as handle:
        extra = {"messages": [{"role": "user", "content": "hi", "name": "x"}, {"role": "assistant", "content": "yo"}]}
        handle.write(json.dumps({**extra, "interaction_id": 5, "score": 1.0}) + "\n")
    assert resolve_dataset_dir("ds-1", home) == directory.resolve()
    assert resolve_dataset_dir(directory, tmp_path / "elsewhere") == directory.resolve()
    version = load_dataset_version(directory)
    assert version.id == "ds-1" and len(version.train) == 7 and len(version.eval) == 2
    assert version.train[-1] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert set(version.file_sha256) == {"train.jsonl", "eval.jsonl"}
    with pytest.raises(DatasetError, match="no dataset version"):
        resolve_dataset_dir("ds-2", home)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "train.jsonl:7: not JSON"),
        ('{"text": "hi"}', "train.jsonl:7: expected an object"),
        ('{"messages": [{"role": "robot", "content": "x"}]}', "train.jsonl:7: messages\\[0\\]"),
        ('{"messages": [{"role": "user", "content": "x"}]}', "train.jsonl:7: the last message must be the assistant"),
    ],
)
def test_bad_dataset_lines_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    directory = _write_demo_dataset(tmp_path)
    with (directory / "train.jsonl").open("a") as handle:
        handle.write(line + "\n")
    with pytest.raises(DatasetError, match=message):
        load_dataset_version(directory)


def test_manifest_needs_id_and_hash(tmp_path: Path) -> None:
    directory = _write_demo_dataset(tmp_path)
    (directory / "manifest.json").write_text(json.dumps({"id": "x"}))
    with pytest.raises(DatasetError, match="needs 'id' and 'sha256'"):
        load_dataset_version(directory)


def test_run_key_ignores_reporting_fields_only() -> None:
    config = TrainConfig().to_dict()
    dataset = {"sha256": "abc", "file_sha256": {"train.jsonl": "1"}}
    key = run_key(config, {"lr": 1}, dataset, "/base")
    assert run_key({**config, "run_name": "x", "resume": False}, {"lr": 1}, dataset, "/base") == key
    assert run_key({**config, "lora_r": 8}, {"lr": 1}, dataset, "/base") != key
    assert run_key(config, {"lr": 2}, dataset, "/base") != key
    assert run_key(config, {"lr": 1}, {**dataset, "sha256": "abd"}, "/base") != key
    assert run_key(config, {"lr": 1}, dataset, "/other") != key


def test_partial_run_keeps_its_id_across_attempts_and_publishes_atomically(tmp_path: Path) -> None:
    with open_partial(tmp_path, "k" * 64, resume=True) as first:
        (first.checkpoints / "checkpoint-3").mkdir(parents=True)
    assert not any(p.name.startswith("2") for p in tmp_path.iterdir())  # nothing published yet
    with open_partial(tmp_path, "k" * 64, resume=True) as second:
        assert second.run_id == first.run_id and second.attempt == 2
        (second.path / "adapter").mkdir()
        (second.path / "adapter" / "adapter_config.json").write_text("{}")
        run_dir = publish(second, tmp_path, {"status": "complete"})
    assert [p.name for p in tmp_path.iterdir()] == [first.run_id]
    assert sorted(p.name for p in run_dir.iterdir()) == ["adapter", "run.json"]  # checkpoints dropped
    _, adapter_dir, metadata = read_run(run_dir / "adapter")
    assert adapter_dir == run_dir / "adapter" and metadata["run_id"] == first.run_id


def test_identical_run_in_progress_is_refused(tmp_path: Path) -> None:
    from trainer.rundir import RunInProgressError

    with (
        open_partial(tmp_path, "a" * 64, resume=True),
        pytest.raises(RunInProgressError),
        open_partial(tmp_path, "a" * 64, resume=True),
    ):
        pass


def test_compare_logits_tolerates_rounding_and_refuses_real_differences() -> None:
    generator = torch.Generator().manual_seed(0)
    reference = [torch.randn(12, 50, generator=generator) * 5 for _ in range(3)]
    rounded = [r.to(torch.bfloat16).float() for r in reference]
    assert compare_logits(reference, rounded, rtol=5e-2, min_top1=0.95).passed
    assert not compare_logits(reference, rounded, rtol=1e-6, min_top1=0.95).passed
    shifted = [r + torch.randn(r.shape, generator=generator) for r in reference]
    report = compare_logits(reference, shifted, rtol=5e-2, min_top1=0.95)
    assert not report.passed and report.top1_agreement < 0.95
    broken = [r.clone() for r in reference]
    broken[0][0, 0] = float("nan")
    assert not compare_logits(reference, broken, rtol=1.0, min_top1=0.0).passed


def test_near_ties_do_not_count_for_top1_agreement_but_decided_flips_do() -> None:
    reference = [torch.tensor([[10.0, 9.99, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0]])]
    near_tie_flipped = [torch.tensor([[9.99, 10.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0]])]
    report = compare_logits(reference, near_tie_flipped, rtol=5e-2, min_top1=0.99, tie_margin=1e-2)
    assert report.passed and report.decided_positions == 2 and report.raw_top1_agreement == pytest.approx(2 / 3)
    assert not compare_logits(reference, near_tie_flipped, rtol=5e-2, min_top1=0.99).passed  # margin 0: all count
    decided_flipped = [torch.tensor([[10.0, 9.99, 0.0], [10.0, 10.3, 0.0], [0.0, 10.0, 0.0]])]
    assert not compare_logits(reference, decided_flipped, rtol=5e-2, min_top1=0.99, tie_margin=1e-2).passed


def test_cli_reports_bad_config_without_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tuneloop.cli import app

    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path))
    _write_demo_dataset(tmp_path / "datasets")
    runner = CliRunner()
    # CliRunner never prints an exception, so "Traceback" is never in its output: a crash shows as
    # result.exception (exit code 1), a refusal as the SystemExit of its exit code.
    result = runner.invoke(app, ["train", "--dataset", "ds-1", "--set", "lora_r=0"])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.exception
    assert "lora_r: must be > 0" in result.output
    result = runner.invoke(app, ["train", "--dataset", "nope"])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.exception
    assert "no dataset version 'nope'" in result.output
    result = runner.invoke(app, ["merge", "no-such-run"])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.exception
    assert "no run 'no-such-run'" in result.output


def test_resume_skips_a_checkpoint_cut_short(tmp_path: Path) -> None:
    with open_partial(tmp_path, "c" * 64, resume=True) as partial:
        assert partial.last_checkpoint() is None
        for step, state in ((8, "{}"), (16, '{"global_step": 1'), (24, None)):
            folder = partial.checkpoints / f"checkpoint-{step}"
            folder.mkdir(parents=True)
            if state is not None:
                (folder / "trainer_state.json").write_text(state)
        assert partial.last_checkpoint() == str(partial.checkpoints / "checkpoint-8")


def test_selective_checkpointing_reaches_the_layers_through_peft(tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    from trainer.demo_model import build_demo_model
    from trainer.modeling import load_base_model, prepare_for_training

    base = build_demo_model(tmp_path / "base")
    model = load_base_model(base, device="cpu", quantization="none", compute_dtype="float32")
    model = prepare_for_training(model, quantization="none", checkpointing="selective")
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"]))
    peft_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    checkpoint_kwargs = peft_model.base_model.model.model.layers[0]._gradient_checkpointing_func.keywords
    assert checkpoint_kwargs["context_fn"].func.__name__ == "create_selective_checkpoint_contexts"
    assert "selective" not in checkpoint_kwargs


def test_templates_without_generation_markers_train_on_the_last_assistant_turn() -> None:
    from types import SimpleNamespace

    from trainer.demo_model import CHAT_TEMPLATE
    from trainer.train import _to_hf_dataset, template_marks_assistant

    assert template_marks_assistant(SimpleNamespace(chat_template=CHAT_TEMPLATE))
    assert not template_marks_assistant(SimpleNamespace(chat_template="{{ messages[0]['content'] }}"))
    chat = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a"}]
    rows = _to_hf_dataset([chat], assistant_masks=False).to_list()
    assert rows == [{"prompt": chat[:2], "completion": chat[2:]}]
    assert _to_hf_dataset([chat], assistant_masks=True).to_list() == [{"messages": chat}]
