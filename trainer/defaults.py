"""Per-device, per-model-size defaults: pure functions from (config, environment facts) to concrete settings.

The CUDA defaults follow the H200 measurements in trainer/README.md, "Reference recipe and measurements":
nf4 QLoRA with double quant, bf16 compute, paged 8-bit AdamW, gradient checkpointing, Liger kernels when
installed, micro-batch 4 x accumulation 4 (the reference recipe's effective batch of 16, with fewer, larger
steps than its 2 x 8, and an estimated peak still under its 17.6 GiB; micro-batch 8 measured 22.3 GiB and
would break that budget).
The CPU defaults follow the CPU measurements in the same section: plain fp32 LoRA, no checkpointing.
For a real small model on CPU (SmolLM2-135M-Instruct, the embedded default) they were measured on the demo
task, 120 examples (~8.5 k tokens an epoch), 2 busy cores, greedy answers to 20 held-out questions:
  packed 512, batch 8, 2e-4 x 2 epochs:   6 optimizer steps, 268 s, 62 tokens/s, 20 GB peak RSS, 14/20 right
  unpacked, batch 8, 2e-4 x 2 epochs:    30 steps, 149 s, 122 tokens/s, 3.8 GB, 20/20 right
  unpacked, batch 8, 1e-3 x 1 epoch:     15 steps,  91 s, 101 tokens/s, 3.9 GB, 20/20 right  <- the default
Packing short chat rows into 512-token sequences cuts the optimizer steps five-fold and the 49 k-token
vocabulary's logits over 8 x 512 positions cost gigabytes; unpacked rows of ~70 tokens learn in one epoch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from trainer.config import ConfigError, TrainConfig

# Below this many parameters a model is "tiny" (the demo base has ~1M): it needs a far higher learning rate
# and more epochs than the reference recipe's 2e-4 x 3 for an 8B model (2e-4 teaches it nothing in 10 epochs:
# trainer/README.md, "Reference recipe and measurements").
TINY_MODEL_PARAMETERS = 50_000_000
REAL_MODEL_LR, TINY_MODEL_LR = 2e-4, 5e-3
REAL_MODEL_EPOCHS, TINY_MODEL_EPOCHS = 3.0, 10.0
# Real models on CPU: one epoch of unpacked rows at a higher rate (measured above).
CPU_REAL_MODEL_LR, CPU_REAL_MODEL_EPOCHS, CPU_REAL_MODEL_BATCH = 1e-3, 1.0, 8
# KTO and DPO with LoRA: their gradients are sigmoid-weighted log-ratio terms, not a token's cross-entropy.
PREFERENCE_LR = {"tiny": 5e-3, "cpu_real": 5e-4, "cuda": 5e-5}
CUDA_ONLY_OPTIMIZERS = ("paged_adamw_8bit", "paged_adamw_32bit", "adamw_8bit", "adamw_torch_fused")


@dataclass(frozen=True)
class Environment:
    """What the machine offers; collected by `detect_environment`, given by hand in tests."""

    cuda_available: bool
    bf16_supported: bool
    liger_installed: bool


@dataclass(frozen=True)
class ModelShape:
    """What the trainer needs to know about a base model before loading its weights."""

    parameters: int
    hidden_size: int
    model_type: str


@dataclass(frozen=True)
class Resolved:
    """Every "auto" of a TrainConfig replaced by a concrete choice."""

    device: str
    quantization: str
    compute_dtype: str
    bf16: bool
    learning_rate: float
    epochs: float
    batch_size: int
    grad_accumulation: int
    max_length: int
    gradient_checkpointing: str
    liger_kernels: bool
    optimizer: str
    tiny_model: bool
    packing: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate_parameters(model_config: dict[str, Any]) -> int:
    """Parameter count of a decoder-only transformer from its config.json (no weights loaded)."""
    hidden = int(model_config.get("hidden_size", 0))
    layers = int(model_config.get("num_hidden_layers", 0))
    vocab = int(model_config.get("vocab_size", 0))
    intermediate = int(model_config.get("intermediate_size", 4 * hidden))
    heads = max(int(model_config.get("num_attention_heads", 1)), 1)
    kv_heads = int(model_config.get("num_key_value_heads", heads))
    head_dim = int(model_config.get("head_dim", hidden // heads))
    attention = hidden * head_dim * (2 * heads + 2 * kv_heads)
    mlp = 3 * hidden * intermediate
    embeddings = vocab * hidden * (1 if model_config.get("tie_word_embeddings") else 2)
    return layers * (attention + mlp) + embeddings


def shape_from_config(model_config: dict[str, Any]) -> ModelShape:
    return ModelShape(
        parameters=estimate_parameters(model_config),
        hidden_size=int(model_config.get("hidden_size", 0)),
        model_type=str(model_config.get("model_type", "")),
    )


def resolve(config: TrainConfig, env: Environment, shape: ModelShape) -> Resolved:
    """Fill the config's automatic values; raise ConfigError when a choice cannot work on this machine."""
    device = config.device
    if device == "auto":
        device = "cuda" if env.cuda_available else "cpu"
    if device == "cuda" and not env.cuda_available:
        raise ConfigError("device", "cuda was asked for but torch sees no CUDA device")
    cuda = device == "cuda"
    tiny = shape.parameters < TINY_MODEL_PARAMETERS

    quantization = config.quantization
    if quantization == "auto":
        quantization = "nf4" if cuda else "none"

    optimizer = config.optimizer
    if optimizer == "auto":
        optimizer = "paged_adamw_8bit" if cuda and quantization == "nf4" else "adamw_torch"
    if not cuda and optimizer in CUDA_ONLY_OPTIMIZERS:
        raise ConfigError("optimizer", f"{optimizer} needs CUDA; on CPU use adamw_torch")

    liger = config.liger_kernels == "on" or (config.liger_kernels == "auto" and cuda and env.liger_installed)
    if liger and not cuda:
        raise ConfigError("liger_kernels", "Liger kernels are Triton GPU kernels; turn them off on CPU")

    checkpointing = config.gradient_checkpointing
    if checkpointing == "auto":
        checkpointing = "full" if cuda else "off"

    bf16 = cuda and env.bf16_supported
    # nf4 keeps the reference recipe's bf16 compute (bitsandbytes' CPU path runs bf16 too); plain LoRA on CPU is fp32.
    compute_dtype = "bfloat16" if quantization == "nf4" or bf16 else "float32"

    cpu_real = not cuda and not tiny
    if tiny:
        learning_rate, epochs = TINY_MODEL_LR, TINY_MODEL_EPOCHS
    elif cpu_real:
        learning_rate, epochs = CPU_REAL_MODEL_LR, CPU_REAL_MODEL_EPOCHS
    else:
        learning_rate, epochs = REAL_MODEL_LR, REAL_MODEL_EPOCHS
    return Resolved(
        device=device,
        quantization=quantization,
        compute_dtype=compute_dtype,
        bf16=bf16,
        learning_rate=config.learning_rate or learning_rate,
        epochs=config.epochs or epochs,
        batch_size=config.batch_size or (CPU_REAL_MODEL_BATCH if cpu_real else 4),
        grad_accumulation=config.grad_accumulation or (4 if cuda else 1),
        max_length=config.max_length or (2048 if cuda else 512),
        gradient_checkpointing=checkpointing,
        liger_kernels=liger,
        optimizer=optimizer,
        tiny_model=tiny,
        packing=config.packing if config.packing is not None else not cpu_real,
    )


def preference_learning_rate(resolved: Resolved) -> float:
    """The default peak learning rate of a KTO or DPO run with these resolved settings."""
    if resolved.tiny_model:
        return PREFERENCE_LR["tiny"]
    return PREFERENCE_LR["cuda" if resolved.device == "cuda" else "cpu_real"]


def detect_environment() -> Environment:
    """The real machine's facts (imports torch)."""
    import importlib.util

    import torch

    cuda = torch.cuda.is_available()
    return Environment(
        cuda_available=cuda,
        bf16_supported=cuda and torch.cuda.is_bf16_supported(),
        liger_installed=importlib.util.find_spec("liger_kernel") is not None,
    )
