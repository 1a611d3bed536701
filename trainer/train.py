"""`train(config, dataset_dir) -> TrainResult`: a dataset version in, a LoRA/QLoRA adapter run out.

TRL's SFTTrainer, KTOTrainer or DPOTrainer + PEFT do the training (the method: `config.method`, `auto` chosen
from the dataset's views by trainer/methods.py); this module decides the device-specific settings, guards the
bitsandbytes CPU bug, checkpoints for crash resume, measures the run and publishes it atomically as
`<runs>/<run_id>/{adapter/, run.json}`.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.chat_format import VIEW_FILES
from core.clock import utcnow
from trainer.config import ConfigError, TrainConfig
from trainer.data import DatasetVersion, load_dataset_version, read_manifest, read_split
from trainer.defaults import Resolved, detect_environment, preference_learning_rate, resolve, shape_from_config
from trainer.distributed import join_ranks
from trainer.methods import MethodPlan, ViewSizes, plan_method
from trainer.rundir import PartialRun, publish, run_key

ADAPTER_DIRNAME = "adapter"


@dataclass
class TrainResult:
    """A finished, published run."""

    run_id: str
    run_dir: Path
    adapter_dir: Path
    metadata: dict[str, Any]

    @property
    def final_train_loss(self) -> float | None:
        return self.metadata.get("final_train_loss")

    @property
    def final_eval_loss(self) -> float | None:
        return self.metadata.get("final_eval_loss")


def resolve_base_model(config: TrainConfig) -> str:
    """Absolute path for a local base model (adapter configs must not hold relative paths), else the HF id."""
    base = config.base_model
    if not base:
        raise ConfigError("base_model", "empty; name a local checkpoint or an HF id (`tuneloop train` fills in "
                                        "the settings' base model)")
    local = Path(base).expanduser()
    return str(local.resolve()) if local.exists() else base


def read_model_config(base_model: str) -> dict[str, Any]:
    local = Path(base_model) / "config.json"
    if local.is_file():
        return json.loads(local.read_text())
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(base_model).to_dict()


def runs_root(config: TrainConfig) -> Path:
    if not config.output_dir:
        raise ConfigError("output_dir", "empty; name the directory runs go under (`tuneloop train` uses HOME/runs)")
    return Path(config.output_dir).expanduser().resolve()


@dataclass
class Plan:
    """Everything decided before a model loads."""

    base_model: str
    dataset: DatasetVersion
    resolved: Resolved
    model_config: dict[str, Any]
    method: MethodPlan


def plan(config: TrainConfig, dataset_dir: str | Path) -> Plan:
    """Read the dataset's views, choose the method, resolve the settings; ConfigError/DatasetError on bad input."""
    manifest = read_manifest(dataset_dir)
    n_sft = len(read_split(Path(dataset_dir) / VIEW_FILES["sft"][0])) if config.method in ("auto", "sft") else 0
    sizes = ViewSizes.from_counts(manifest.get("counts", {}), n_sft)
    base_model = resolve_base_model(config)
    model_config = read_model_config(base_model)
    resolved = resolve(config, detect_environment(), shape_from_config(model_config))
    method = plan_method(config.method, sizes, resolved.batch_size)
    dataset = load_dataset_version(dataset_dir, method.method)
    if method.method != "sft":
        rate = config.learning_rate or preference_learning_rate(resolved)
        resolved = dataclasses.replace(resolved, learning_rate=rate * method.lr_scale, packing=False)
    return Plan(base_model, dataset, resolved, model_config, method)


def _common_args(config: TrainConfig, resolved: Resolved, partial: PartialRun, has_eval: bool) -> dict[str, Any]:
    """TrainingArguments every method shares."""
    checkpointing = resolved.gradient_checkpointing != "off"  # "selective" is hooked in by prepare_for_training
    warmup: float | int = config.warmup if config.warmup < 1 else int(config.warmup)
    return dict(
        output_dir=str(partial.checkpoints),
        num_train_epochs=resolved.epochs,
        max_steps=config.max_steps or -1,
        per_device_train_batch_size=resolved.batch_size,
        per_device_eval_batch_size=resolved.batch_size,
        gradient_accumulation_steps=resolved.grad_accumulation,
        learning_rate=resolved.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=warmup,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        optim=resolved.optimizer,
        bf16=resolved.bf16,
        use_cpu=resolved.device == "cpu",
        gradient_checkpointing=checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
        max_length=resolved.max_length,
        eval_strategy="epoch" if has_eval and config.eval_each_epoch else "no",
        save_strategy="steps" if config.save_steps else "epoch",
        save_steps=config.save_steps or 500,
        save_total_limit=2,
        logging_strategy="steps",
        logging_steps=0.02,  # a fraction: ~50 points on the loss curve whatever the run length
        logging_first_step=True,
        report_to=config.report_to or "none",
        run_name=config.run_name or partial.run_id,
        seed=config.seed,
        data_seed=config.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


def _sft_config(config: TrainConfig, resolved: Resolved, partial: PartialRun, has_eval: bool,
                assistant_masks: bool) -> Any:
    from trl import SFTConfig

    return SFTConfig(
        **_common_args(config, resolved, partial, has_eval),
        packing=resolved.packing,
        assistant_only_loss=config.assistant_only_loss and assistant_masks,
        # Without template markers the rows are prompt/completion pairs: TRL masks the prompt itself.
        completion_only_loss=config.assistant_only_loss if not assistant_masks else None,
        use_liger_kernel=resolved.liger_kernels,
        include_num_input_tokens_seen="non_padding",
    )


def _lora_config(config: TrainConfig) -> Any:
    from peft import LoraConfig

    modules: Any = "all-linear" if config.target_modules == ["all-linear"] else config.target_modules
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=modules,
        bias="none",
        task_type="CAUSAL_LM",
    )


_GENERATION_BLOCK = re.compile(r"\{%-?\s*generation\s*-?%\}")


def template_marks_assistant(tokenizer: Any) -> bool:
    """True when the chat template wraps assistant turns in {% generation %} (TRL's assistant_only_loss)."""
    return bool(_GENERATION_BLOCK.search(tokenizer.chat_template or ""))


def _to_hf_dataset(examples: list[list[dict[str, str]]], assistant_masks: bool) -> Any:
    """Conversational rows for TRL. Most released templates (SmolLM2's, Llama's) carry no generation markers;
    then each example becomes a prompt (every turn before the last assistant turn) and a completion (that
    turn), and TRL's completion-only loss masks the prompt: the same tokens learned, with any template."""
    from datasets import Dataset

    if assistant_masks:
        return Dataset.from_list([{"messages": messages} for messages in examples])
    rows = []
    for messages in examples:
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        rows.append({"prompt": messages[:last], "completion": [messages[last]]})
    return Dataset.from_list(rows)


def _save_adapter(trainer: Any, tokenizer: Any, adapter_dir: Path, base_model: str) -> None:
    """Called on every rank: under FSDP or DeepSpeed ZeRO-3 all ranks gather the adapter's shards
    (Trainer.save_model); rank 0 alone writes, once."""
    trainer.save_model(str(adapter_dir))
    if not trainer.is_world_process_zero():
        return
    (adapter_dir / "training_args.bin").unlink(missing_ok=True)  # a pickle of the arguments; run.json has them
    tokenizer.save_pretrained(str(adapter_dir))
    # vLLM and merge_adapter load the base from here: keep the absolute path we trained on.
    config_path = adapter_dir / "adapter_config.json"
    adapter_config = json.loads(config_path.read_text())
    adapter_config["base_model_name_or_path"] = base_model
    config_path.write_text(json.dumps(adapter_config, indent=2, sort_keys=True))


def _loss_masking(method: str, masks: bool) -> str:
    if method != "sft":
        return f"{method}: completion log-probabilities against the reference (the base, adapter disabled)"
    return "assistant tokens (template markers)" if masks else "completion (last assistant turn)"


def _parameter_counts(model: Any) -> dict[str, int]:
    trainable, total = model.get_nb_trainable_parameters()
    return {"trainable_parameters": int(trainable), "total_parameters": int(total)}


def train(
    config: TrainConfig,
    dataset_dir: str | Path,
    *,
    progress: bool = True,
    callbacks: Sequence[Any] = (),
) -> TrainResult:
    """Fine-tune `config.base_model` on the dataset version at `dataset_dir` and publish the run.

    With `config.processes` > 1 this is one rank of `accelerate launch` (trainer/launch.py): every rank returns
    the run rank 0 published."""
    wall_start = time.perf_counter()
    decided = plan(config, dataset_dir)
    root = runs_root(config)
    key = run_key(config.to_dict(), {**decided.resolved.to_dict(), "method": decided.method.to_dict()},
                  decided.dataset.identity(), decided.base_model)
    ranks = join_ranks(config.processes, decided.resolved.device)
    run_dir: Path | None = None
    with ranks.partial_run(root, key, resume=config.resume) as partial:
        metadata = _train_in(partial, config, decided, progress and ranks.is_main, callbacks)
        if ranks.is_main:
            resolved = decided.resolved
            metadata.update(key=key, world_size=ranks.count, wall_seconds=round(time.perf_counter() - wall_start, 3),
                            effective_batch_size=ranks.count * resolved.batch_size * resolved.grad_accumulation)
            run_dir = publish(partial, root, metadata)
    run_dir = ranks.share(run_dir)
    assert run_dir is not None
    metadata = json.loads((run_dir / "run.json").read_text())
    return TrainResult(run_dir.name, run_dir, run_dir / ADAPTER_DIRNAME, metadata)


def _train_in(
    partial: PartialRun, config: TrainConfig, decided: Plan, progress: bool, extra_callbacks: Sequence[Any],
) -> dict[str, Any]:
    import datasets
    import transformers
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTTrainer

    from trainer.callbacks import BnbCpuGuardCallback, RichProgressCallback, ThroughputCallback
    from trainer.metadata import code_revision, device_description, library_versions, loss_curve
    from trainer.modeling import load_base_model, load_tokenizer, prepare_for_training
    from trainer.preference import preference_trainer

    dataset, resolved, base_model, model_config = decided.dataset, decided.resolved, decided.base_model, \
        decided.model_config
    datasets.disable_progress_bars()
    transformers.set_seed(config.seed)
    tokenizer = load_tokenizer(base_model)
    model = load_base_model(
        base_model, device=resolved.device, quantization=resolved.quantization, compute_dtype=resolved.compute_dtype
    )
    model = prepare_for_training(
        model, quantization=resolved.quantization, checkpointing=resolved.gradient_checkpointing
    )
    throughput = ThroughputCallback()
    callbacks: list[Any] = [throughput, *extra_callbacks]
    guard = None
    if resolved.quantization == "nf4" and resolved.device == "cpu":
        guard = BnbCpuGuardCallback()
        callbacks.append(guard)
    if progress:
        callbacks.append(RichProgressCallback())
    has_eval = bool(dataset.eval)
    masks = template_marks_assistant(tokenizer)
    if decided.method.method == "sft":
        trainer = SFTTrainer(
            model=model,
            args=_sft_config(config, resolved, partial, has_eval, masks),
            train_dataset=_to_hf_dataset(dataset.train, masks),
            eval_dataset=_to_hf_dataset(dataset.eval, masks) if has_eval else None,
            processing_class=tokenizer,
            peft_config=_lora_config(config),
            callbacks=callbacks,
        )
    else:
        trainer = preference_trainer(
            decided.method, config, _common_args(config, resolved, partial, has_eval), model, tokenizer, dataset,
            _lora_config(config), callbacks,
        )
    trainer.remove_callback(PrinterCallback)  # the rich bar (or silence) instead of printed log dicts
    resumed_from = partial.last_checkpoint() if config.resume else None
    output = trainer.train(resume_from_checkpoint=resumed_from)
    final_eval_loss = None
    if has_eval:
        evals = [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e]
        final_eval_loss = evals[-1] if evals else trainer.evaluate()["eval_loss"]
    _save_adapter(trainer, tokenizer, partial.path / ADAPTER_DIRNAME, base_model)
    curve = loss_curve(trainer.state.log_history)
    return {
        "status": "complete",
        "adapter_dir": ADAPTER_DIRNAME,
        "started_at": partial.started_at,
        "finished_at": utcnow().isoformat(),
        "attempts": partial.attempt,
        "resumed_from_step": int(resumed_from.rsplit("-", 1)[-1]) if resumed_from else None,
        "config": config.to_dict(),
        "resolved": resolved.to_dict(),
        "base_model": {
            "path": base_model,
            "model_type": model_config.get("model_type"),
            "architectures": model_config.get("architectures"),
        },
        "dataset": dataset.identity(),
        "libraries": library_versions(),
        "code": code_revision(),
        "device": device_description(resolved.device),
        "method": decided.method.to_dict(),
        "loss_masking": _loss_masking(decided.method.method, masks),
        "loss_curve": curve,
        "final_train_loss": curve["train"][-1]["loss"] if curve["train"] else None,
        "mean_train_loss": output.training_loss,
        "final_eval_loss": final_eval_loss,
        "global_step": trainer.state.global_step,
        "epochs_completed": trainer.state.epoch,
        "train_runtime_seconds": output.metrics.get("train_runtime"),
        "throughput": throughput.summary(),
        "bnb_cpu_guarded_layers": guard.guarded_layers if guard else None,
        **_parameter_counts(trainer.model),
    }
