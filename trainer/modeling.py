"""Loading base models and tokenizers the way training and merging both need them.

Holds the bitsandbytes CPU guard: on CPUs with AVX512-BF16, `Linear4bit` repacks its weight on the first
eval-mode no-grad forward (SFTTrainer's per-epoch eval is one), after which backward silently drops the
gradient through the frozen weight (held-out exact match fell 82.5% -> 5%; trainer/README.md, "Reference recipe
and measurements").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def bnb_quantization_config(compute_dtype: str) -> Any:
    """The reference recipe's QLoRA quantization: nf4 with double quant and the given compute dtype."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=DTYPES[compute_dtype],
        bnb_4bit_use_double_quant=True,
    )


def load_tokenizer(path: str | Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(path: str | Path, *, device: str, quantization: str, compute_dtype: str) -> Any:
    """The base model on `device`: 4-bit nf4 when quantization == "nf4" (guarded on CPU), else full precision."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": DTYPES[compute_dtype], "attn_implementation": "sdpa"}
    if quantization == "nf4":
        kwargs["quantization_config"] = bnb_quantization_config(compute_dtype)
        # Under `accelerate launch` each rank loads onto its own GPU (TRL's idiom for QLoRA with DDP); alone, GPU 0.
        kwargs["device_map"] = {"": _local_gpu() if device == "cuda" else "cpu"}
    model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    if quantization != "nf4":
        model.to(device)
    if quantization == "nf4" and device == "cpu":
        guard_bnb_cpu(model)
    return model


def prepare_for_training(model: Any, *, quantization: str, checkpointing: str) -> Any:
    """Selective checkpointing hook and k-bit preparation, before PEFT wraps the model.

    TRL's own `gradient_checkpointing_kwargs={"selective": True}` wraps the PEFT model, and the key then
    reaches torch's checkpoint ("Unexpected keyword arguments: selective"); wrapping the base model here works.
    """
    if checkpointing == "selective":
        from trl.models.selective_activation_checkpointing import enable_selective_activation_checkpointing

        enable_selective_activation_checkpointing(model)
    if quantization == "nf4":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing != "off")
    return model


def guard_bnb_cpu(model: torch.nn.Module) -> int:
    """Stop every bnb Linear4bit from repacking for AVX512-BF16; returns how many layers it set."""
    import bitsandbytes as bnb

    guarded = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            guarded += 1
    return guarded


def unguarded_4bit_layers(model: torch.nn.Module) -> list[str]:
    """Names of Linear4bit layers that could still repack on CPU (empty when the guard holds)."""
    import bitsandbytes as bnb

    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, bnb.nn.Linear4bit) and getattr(module, "support_avx512bf16_for_cpu", False)
    ]


def is_quantized(model: torch.nn.Module) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def _local_gpu() -> int:
    from accelerate import PartialState

    return PartialState().local_process_index
