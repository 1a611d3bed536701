"""`TrainConfig`: every knob of a fine-tuning run, validated before any model loads.

Values left at "auto" (or None) are filled per device and model size by `trainer.defaults.resolve`, so one
config file works on a CUDA host (QLoRA, paged 8-bit AdamW, Liger) and on a CPU box (plain LoRA).
Build one from YAML with CLI overrides via `load_train_config(path, ["learning_rate=5e-3", ...])`.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

QUANTIZATIONS = ("auto", "nf4", "none")
METHODS = ("auto", "sft", "kto", "dpo")
DEVICES = ("auto", "cuda", "cpu")
CHECKPOINTING = ("auto", "full", "selective", "off")
SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "cosine_with_min_lr",
    "warmup_stable_decay",
)
OPTIMIZERS = (
    "auto",
    "adamw_torch",
    "adamw_torch_fused",
    "paged_adamw_8bit",
    "adamw_8bit",
    "paged_adamw_32bit",
)
# report_to value -> the package it needs
REPORTERS = {"wandb": "wandb", "mlflow": "mlflow", "tensorboard": "tensorboard"}
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class ConfigError(ValueError):
    """A bad config value; `field` names the offending field."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


def _meta(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class TrainConfig:
    """One fine-tuning run: base model, LoRA shape, quantization, optimisation schedule, outputs."""

    base_model: str = field(
        default="",
        metadata=_meta("Base model: a local directory or an HF id; `tuneloop train` fills in the settings' one."),
    )
    method: str = field(
        default="auto",
        metadata=_meta(
            "sft (chat examples), kto (every thumb, unpaired), dpo (chosen/rejected pairs) or auto: chosen "
            "from the dataset's view sizes by the rule in trainer/methods.py."
        ),
    )
    beta: float = field(
        default=0.1,
        metadata=_meta("KTO/DPO: how far the model may move from the reference (the base, adapter off); higher "
                       "keeps it closer."),
    )
    device: str = field(
        default="auto", metadata=_meta("Where to train: auto (cuda when available), cuda, cpu.")
    )
    quantization: str = field(
        default="auto",
        metadata=_meta(
            "auto: nf4 QLoRA (double quant) on CUDA, plain LoRA on CPU; nf4: QLoRA anywhere; none: LoRA."
        ),
    )
    lora_r: int = field(default=16, metadata=_meta("LoRA rank."))
    lora_alpha: int = field(
        default=32, metadata=_meta("LoRA scaling numerator (the convention is 2 x rank).")
    )
    lora_dropout: float = field(default=0.05, metadata=_meta("Dropout on the LoRA branch, 0 <= p < 1."))
    target_modules: list[str] = field(
        default_factory=lambda: list(PROJECTIONS),
        metadata=_meta("LoRA target modules (all seven Llama projections by default), or ['all-linear']."),
    )
    learning_rate: float | None = field(
        default=None,
        metadata=_meta(
            "Peak learning rate; None: 2e-4 on CUDA (the reference recipe), 1e-3 for real models on CPU (one short "
            "epoch), 5e-3 for tiny random models."
        ),
    )
    lr_scheduler: str = field(default="cosine", metadata=_meta(f"Schedule, one of {', '.join(SCHEDULERS)}."))
    warmup: float = field(
        default=0.03, metadata=_meta("Warm-up: a fraction of all steps when < 1, else a number of steps.")
    )
    epochs: float | None = field(
        default=None,
        metadata=_meta("Passes over the train split; None: 3 on CUDA, 1 for real models on CPU, 10 for tiny ones."),
    )
    batch_size: int | None = field(
        default=None, metadata=_meta("Micro-batch per step; None: 8 for real models on CPU, else 4.")
    )
    grad_accumulation: int | None = field(
        default=None, metadata=_meta("Micro-batches per optimizer step; None: 4 on CUDA, 1 on CPU.")
    )
    max_length: int | None = field(
        default=None, metadata=_meta("Tokens per (packed) sequence; None: 2048 on CUDA, 512 on CPU.")
    )
    packing: bool | None = field(
        default=None,
        metadata=_meta("Pack several examples per sequence (TRL best-fit); None: on, except for real models on CPU "
                       "(short chat rows: unpacked, the same tokens give several times the optimizer steps)."),
    )
    assistant_only_loss: bool = field(
        default=True,
        metadata=_meta("Train only on assistant tokens (the chat template needs {% generation %} markers)."),
    )
    gradient_checkpointing: str = field(
        default="auto",
        metadata=_meta("auto (full on CUDA, off on CPU), full, selective (keep attention outputs) or off."),
    )
    liger_kernels: str = field(
        default="auto",
        metadata=_meta("Liger kernels: auto (on CUDA when liger-kernel is installed), on, off."),
    )
    optimizer: str = field(
        default="auto", metadata=_meta("auto: paged_adamw_8bit with nf4 on CUDA, else adamw_torch.")
    )
    weight_decay: float = field(default=0.0, metadata=_meta("AdamW weight decay."))
    max_grad_norm: float = field(default=1.0, metadata=_meta("Gradient clipping norm."))
    seed: int = field(
        default=42,
        metadata=_meta("Seed for initialisation, shuffling and dropout (runs are reproducible for a seed)."),
    )
    eval_each_epoch: bool = field(
        default=True, metadata=_meta("Eval loss on the eval split after every epoch.")
    )
    save_steps: int = field(
        default=0, metadata=_meta("Checkpoint every N optimizer steps for crash resume; 0: once per epoch.")
    )
    max_steps: int = field(
        default=0, metadata=_meta("Stop after N optimizer steps (smoke runs); 0: no limit.")
    )
    output_dir: str = field(default="", metadata=_meta("Runs directory; `tuneloop train` fills in HOME/runs."))
    run_name: str = field(default="", metadata=_meta("A label for the run (also sent to W&B/MLflow)."))
    report_to: list[str] = field(
        default_factory=list,
        metadata=_meta(
            "Experiment trackers: any of wandb, mlflow, tensorboard (the package must be installed)."
        ),
    )
    resume: bool = field(
        default=True,
        metadata=_meta(
            "Resume from the last checkpoint of an interrupted run with the same config and dataset."
        ),
    )
    processes: int = field(
        default=1,
        metadata=_meta(
            "Training processes on this machine, one per GPU (DDP through `accelerate launch`: NCCL on GPUs, gloo "
            "on CPU). The effective batch is processes x batch_size x grad_accumulation. Above 1 the run needs "
            "trainer.launch.train_in_subprocess (`tuneloop train --processes N`, the cycle)."
        ),
    )
    accelerate_config: str = field(
        default="",
        metadata=_meta(
            "An accelerate config file (FSDP, DeepSpeed: see trainer/accelerate/) passed to `accelerate launch "
            "--config_file`; empty: plain DDP when processes > 1."
        ),
    )

    def __post_init__(self) -> None:
        _check_types(self)
        self._check_choices()
        self._check_numbers()
        self._check_lists()
        self._check_base_model()

    def _check_choices(self) -> None:
        choices = {
            "method": METHODS,
            "device": DEVICES,
            "quantization": QUANTIZATIONS,
            "gradient_checkpointing": CHECKPOINTING,
            "liger_kernels": ("auto", "on", "off"),
            "lr_scheduler": SCHEDULERS,
            "optimizer": OPTIMIZERS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(name, f"must be one of {', '.join(allowed)} (got {getattr(self, name)!r})")
        if self.liger_kernels == "on" and importlib.util.find_spec("liger_kernel") is None:
            raise ConfigError(
                "liger_kernels", "'on' needs the liger-kernel package (pip install liger-kernel)"
            )

    def _check_numbers(self) -> None:
        positive = {
            "lora_r": self.lora_r,
            "lora_alpha": self.lora_alpha,
            "learning_rate": self.learning_rate,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "grad_accumulation": self.grad_accumulation,
            "max_grad_norm": self.max_grad_norm,
            "beta": self.beta,
        }
        for name, value in positive.items():
            if value is not None and value <= 0:
                raise ConfigError(name, f"must be > 0 (got {value})")
        if self.learning_rate is not None and self.learning_rate >= 1:
            raise ConfigError(
                "learning_rate", f"must be < 1 (got {self.learning_rate}); typical LoRA: 1e-4..5e-3"
            )
        if self.method in ("kto", "dpo") and self.batch_size == 1:
            # KTO's KL estimate pairs each row with another of its micro-batch (TRL refuses 1 at run time).
            raise ConfigError("batch_size", f"{self.method} needs a micro-batch of at least 2 (got 1)")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError("lora_dropout", f"must be in [0, 1) (got {self.lora_dropout})")
        if self.warmup < 0 or (self.warmup >= 1 and self.warmup != int(self.warmup)):
            raise ConfigError(
                "warmup", f"must be a fraction in [0, 1) or a whole number of steps (got {self.warmup})"
            )
        if self.max_length is not None and self.max_length < 16:
            raise ConfigError("max_length", f"must be >= 16 tokens (got {self.max_length})")
        for name in ("weight_decay", "seed", "save_steps", "max_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(name, f"must be >= 0 (got {getattr(self, name)})")
        if self.processes < 1:
            raise ConfigError("processes", f"must be >= 1 (got {self.processes})")
        if self.accelerate_config and not Path(self.accelerate_config).expanduser().is_file():
            raise ConfigError("accelerate_config", f"file not found: {self.accelerate_config}")

    def _check_lists(self) -> None:
        if not self.target_modules or not all(m.strip() for m in self.target_modules):
            raise ConfigError("target_modules", "needs at least one module name, e.g. q_proj")
        if "all-linear" in self.target_modules and len(self.target_modules) > 1:
            raise ConfigError("target_modules", "'all-linear' stands alone")
        if self.method in ("kto", "dpo", "auto") and "lm_head" in self.target_modules:
            # TRL's preference losses read lm_head.weight directly: an adapter there would never train.
            raise ConfigError("target_modules", "lm_head cannot take an adapter with kto/dpo (TRL reads its "
                              "weight directly); leave it out")
        for reporter in self.report_to:
            if reporter not in REPORTERS:
                raise ConfigError(
                    "report_to", f"unknown tracker {reporter!r}; choose from {', '.join(REPORTERS)}"
                )
            if importlib.util.find_spec(REPORTERS[reporter]) is None:
                raise ConfigError(
                    "report_to", f"{reporter!r} needs the {REPORTERS[reporter]} package installed"
                )

    def _check_base_model(self) -> None:
        # A value that looks like a path must be a model directory; anything else is taken as an HF id.
        if not self.base_model:
            return
        path = Path(self.base_model).expanduser()
        looks_like_path = self.base_model.startswith(("/", ".", "~")) or path.exists()
        if looks_like_path and not (path / "config.json").is_file():
            raise ConfigError("base_model", f"{self.base_model} is not a model directory (no config.json)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with some fields changed."""
        return from_mapping({**self.to_dict(), **changes})


def field_help() -> dict[str, str]:
    """Field name -> help text (for `tuneloop train --help-config` and docs)."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(TrainConfig)}


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _coerce(name: str, hint: Any, value: Any) -> Any:
    """Turn YAML/CLI values into the declared type; strings from --set are parsed leniently (5e-3, true)."""
    args = typing.get_args(hint)
    optional = isinstance(hint, types.UnionType) and type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if optional else hint
    if value is None or (
        optional and isinstance(value, str) and value.lower() in ("", "none", "null", "auto")
    ):
        if optional:
            return None
        raise ConfigError(name, "must not be empty")
    try:
        if base is bool:
            if isinstance(value, str) and value.lower() in (
                "true",
                "yes",
                "on",
                "1",
                "false",
                "no",
                "off",
                "0",
            ):
                return value.lower() in ("true", "yes", "on", "1")
            if isinstance(value, bool):
                return value
            raise ValueError
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if typing.get_origin(base) is list:
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                raise ValueError
            return list(value)
        if base is str:
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        kind = getattr(base, "__name__", str(base))
        raise ConfigError(name, f"expected {kind}, got {value!r}") from None
    return value


def _check_types(config: TrainConfig) -> None:
    for name, hint in _field_types().items():
        object.__setattr__(config, name, _coerce(name, hint, getattr(config, name)))


def from_mapping(data: dict[str, Any]) -> TrainConfig:
    """A config from a plain mapping; unknown keys are errors naming the key (with a did-you-mean)."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(key, f"unknown config field{hint}")
    return TrainConfig(**data)


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`["key=value", ...]` -> mapping; values stay strings and are coerced by field type."""
    parsed: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(item or "--set", "overrides are written key=value")
        parsed[key.strip()] = value.strip()
    return parsed


def load_train_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config (optional) and apply `key=value` overrides on top."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError("config", f"file not found: {path}") from None
        except yaml.YAMLError as err:
            raise ConfigError("config", f"{path} is not valid YAML: {err}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError("config", f"{path} must hold a mapping of field: value")
        data.update(loaded or {})
    data.update(parse_overrides(overrides or []))
    return from_mapping(data)
