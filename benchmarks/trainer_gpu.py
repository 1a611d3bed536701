"""GPU check for the trainer: the reference QLoRA recipe vs tuneloop's CUDA defaults, then QLoRA end to end.

Run on a CUDA host (never part of the test suite):

    HF_HUB_OFFLINE=1 python benchmarks/trainer_gpu.py [--steps 3] [--variants article,tuneloop] [--skip-e2e]

Part 1 builds a random-weight Llama-3.1-8B-shape model (speed and memory do not depend on weight values),
then trains each variant for 1 warm-up + N optimizer steps on 2048-token sequences and prints the median
tokens/s and peak memory (the method of the H200 table in trainer/README.md, "Reference recipe and
measurements", whose figures for the reference recipe are 5,807 tokens/s at 17.6 GiB peak allocated). The
variant named `article` is the reference recipe (the name is kept for --variants). Target: tuneloop >= 1.5x
its tokens/s at no more peak allocated memory; the script prints PASS/FAIL against that variant measured in
the same run.
Part 2 trains the demo model with nf4 QLoRA on the GPU, dequantize-merges it and checks logits equivalence.

`--smoke-cpu` runs the same plumbing on CPU with a tiny model and no quantization (figures meaningless), to
check the script before spending GPU time. Without CUDA and without --smoke-cpu it exits with an error.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback

ANCHOR = {"tokens_per_second": 5807, "peak_allocated_gib": 17.6}
LLAMA_8B = {
    "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "vocab_size": 128256, "rope_theta": 500000.0, "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
}  # fmt: skip
TINY = {**LLAMA_8B, "hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 1024}  # fmt: skip
GIB = 2**30
# TrainConfig fields per variant on top of tuneloop's CUDA defaults; "article" pins the reference recipe.
VARIANTS: dict[str, dict[str, Any]] = {
    "article": {"quantization": "nf4", "learning_rate": 2e-4, "batch_size": 2, "grad_accumulation": 8,
                "max_length": 2048, "gradient_checkpointing": "full", "liger_kernels": "off",
                "optimizer": "paged_adamw_8bit"},
    "tuneloop": {},
    # Exploration only (not defaults): selective checkpointing, and the faster-but-larger micro-batch 8
    # (22.3 GiB with Liger in trainer/README.md's H200 table).
    "tuneloop-selective": {"gradient_checkpointing": "selective"},
    "tuneloop-mb8": {"batch_size": 8, "grad_accumulation": 2},
}  # fmt: skip


def build_random_model(shape: dict[str, Any], out: Path, on_cuda: bool) -> Path:
    """A random-weight Llama of the given shape saved as bf16 safetensors (reused when already there)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if (out / "config.json").is_file():
        return out
    started = time.perf_counter()
    config = LlamaConfig(**shape, dtype="bfloat16")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda" if on_cuda else "cpu"):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.save_pretrained(out, max_shard_size="5GB")
    del model
    _free()
    print(f"random model {shape['hidden_size']}x{shape['num_hidden_layers']} written in "
          f"{time.perf_counter() - started:.0f} s")  # fmt: skip
    return out


def token_dataset(rows: int, length: int, vocab: int) -> Any:
    from datasets import Dataset

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (rows, length), generator=generator)
    return Dataset.from_dict({"input_ids": ids.tolist()})


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step (CUDA-synchronised), for a median after the warm-up step."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_step_begin(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.seconds.append(time.perf_counter() - self._start)


def variant_settings(name: str, smoke: bool) -> tuple[Any, Any]:
    """(TrainConfig, Resolved) for a variant: the reference recipe, or tuneloop's CUDA defaults."""
    from trainer.config import TrainConfig
    from trainer.defaults import Environment, ModelShape, detect_environment, resolve

    env = detect_environment() if not smoke else Environment(True, True, liger_installed=False)
    shape = ModelShape(parameters=8_030_261_248, hidden_size=4096, model_type="llama")
    if name not in VARIANTS:
        raise SystemExit(f"error: unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    config = TrainConfig(packing=False, assistant_only_loss=False, eval_each_epoch=False, **VARIANTS[name])
    resolved = resolve(config, env, shape)
    if smoke:  # CPU plumbing check: no bitsandbytes CUDA kernels, no paged optimizer, no Liger
        from dataclasses import replace

        resolved = replace(resolved, device="cpu", quantization="none", compute_dtype="float32", bf16=False,
                           optimizer="adamw_torch", liger_kernels=False, max_length=64)  # fmt: skip
    return config, resolved


def run_variant(name: str, model_dir: Path, work: Path, steps: int, smoke: bool) -> dict[str, Any]:
    from trl import SFTTrainer

    from trainer.modeling import load_base_model, load_tokenizer, prepare_for_training
    from trainer.rundir import PartialRun
    from trainer.train import _lora_config, _sft_config

    config, resolved = variant_settings(name, smoke)
    tokens_per_step = resolved.batch_size * resolved.grad_accumulation * resolved.max_length
    partial = PartialRun(path=work / f"bench-{name}", run_id=f"bench-{name}", attempt=1, started_at="")
    args = _sft_config(config, resolved, partial, has_eval=False)
    args.max_steps, args.save_strategy, args.logging_steps = steps + 1, "no", 1
    model = load_base_model(
        model_dir, device=resolved.device, quantization=resolved.quantization, compute_dtype=resolved.compute_dtype
    )
    model = prepare_for_training(
        model, quantization=resolved.quantization, checkpointing=resolved.gradient_checkpointing
    )
    timer = StepTimer()
    rows = (steps + 1) * resolved.batch_size * resolved.grad_accumulation
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=token_dataset(rows, resolved.max_length, model.config.vocab_size),
        processing_class=load_tokenizer(model_dir),
        peft_config=_lora_config(config),
        callbacks=[timer],
    )
    trainer.remove_callback(PrinterCallback)
    trainable, _ = trainer.model.get_nb_trainable_parameters()
    trainer.train()
    median = statistics.median(timer.seconds[1:]) if len(timer.seconds) > 1 else timer.seconds[0]
    result = {
        "variant": name,
        "micro_batch": resolved.batch_size,
        "grad_accumulation": resolved.grad_accumulation,
        "seq_len": resolved.max_length,
        "liger": resolved.liger_kernels,
        "checkpointing": resolved.gradient_checkpointing,
        "optimizer": resolved.optimizer,
        "trainable_parameters": trainable,
        "step_seconds": [round(s, 3) for s in timer.seconds],
        "tokens_per_second": round(tokens_per_step / median, 1),
        "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / GIB, 2) if not smoke else None,
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 2) if not smoke else None,
    }
    del trainer, model
    _free()
    return result


def end_to_end(work: Path) -> dict[str, Any]:
    """QLoRA on the demo model on this GPU: train, dequantize-merge, equivalence check, held-out adherence."""
    from trainer.config import TrainConfig
    from trainer.data import write_dataset_version
    from trainer.demo_model import build_demo_model
    from trainer.demo_task import format_ok, make_examples
    from trainer.evaluate import generate_answers, load_for_generation, rate
    from trainer.merge import merge_adapter
    from trainer.train import train

    base = build_demo_model(work / "demo-base")
    dataset = write_dataset_version(work / "orders", "orders-gpu", make_examples(200, 1), make_examples(40, 2))
    config = TrainConfig(base_model=str(base), quantization="nf4", output_dir=str(work / "runs"))
    result = train(config, dataset, progress=False)
    merged = merge_adapter(result.run_dir, work / "merged")
    check = json.loads((merged / "merge.json").read_text())
    held = [e["messages"] for e in make_examples(40, 3)]
    model, tokenizer = load_for_generation(merged)
    adherence = rate(held, generate_answers(model, tokenizer, held), lambda _c, answer: format_ok(answer))
    return {
        "resolved": result.metadata["resolved"],
        "final_eval_loss": result.final_eval_loss,
        "train_tokens_per_second": result.metadata["throughput"]["tokens_per_second"],
        "merge_method": check["method"],
        "equivalence": check["equivalence"],
        "merged_format_adherence": adherence,
    }


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def verdict(results: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    reference, ours = results.get("article"), results.get("tuneloop")
    if reference and ours:
        speedup = ours["tokens_per_second"] / reference["tokens_per_second"]
        memory_ok = (ours["peak_allocated_gib"] or 0) <= (reference["peak_allocated_gib"] or 0)
        lines.append(f"tuneloop / reference recipe tokens/s: {speedup:.2f}x (target >= 1.5x): "
                     f"{'PASS' if speedup >= 1.5 else 'FAIL'}")  # fmt: skip
        lines.append(f"tuneloop peak allocated {ours['peak_allocated_gib']} GiB vs reference recipe "
                     f"{reference['peak_allocated_gib']} GiB (target: no more): "
                     f"{'PASS' if memory_ok else 'FAIL'}")  # fmt: skip
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="Measured optimizer steps after 1 warm-up step.")
    parser.add_argument("--variants", default="article,tuneloop", help=f"Comma-separated, from: {', '.join(VARIANTS)}.")
    parser.add_argument("--skip-e2e", action="store_true", help="Skip the small-model QLoRA end-to-end check.")
    parser.add_argument("--work", type=Path, default=None, help="Scratch directory (default: a temp dir).")
    parser.add_argument("--json", type=Path, default=None, help="Also write the results to this JSON file.")
    parser.add_argument("--smoke-cpu", action="store_true", help="Plumbing check on CPU, tiny model.")
    args = parser.parse_args()
    if not args.smoke_cpu and not torch.cuda.is_available():
        print("error: benchmarks/trainer_gpu.py needs a CUDA GPU and torch sees none "
              "(use --smoke-cpu to check the script itself on CPU)", file=sys.stderr)  # fmt: skip
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="tuneloop-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    device = "cpu (smoke)" if args.smoke_cpu else torch.cuda.get_device_name(0)
    print(f"device: {device}; torch {torch.__version__}; work dir {work}")
    model_dir = build_random_model(TINY if args.smoke_cpu else LLAMA_8B, work / "random-model", not args.smoke_cpu)
    from trainer.demo_model import build_tokenizer

    build_tokenizer().save_pretrained(model_dir)  # any tokenizer: the inputs are pre-tokenized random ids
    results: dict[str, Any] = {}
    for name in [v.strip() for v in args.variants.split(",") if v.strip()]:
        results[name] = run_variant(name, model_dir, work, args.steps, args.smoke_cpu)
        print(json.dumps(results[name]))
    print(f"\nanchor (reference recipe, H200): {ANCHOR['tokens_per_second']:,} tokens/s at "
          f"{ANCHOR['peak_allocated_gib']} GiB peak allocated")  # fmt: skip
    print(f"{'variant':10} {'mb x acc':>9} {'tokens/s':>10} {'peak alloc GiB':>15} {'peak reserved GiB':>18}")
    for r in results.values():
        print(f"{r['variant']:10} {r['micro_batch']:>4} x {r['grad_accumulation']:<3} {r['tokens_per_second']:>10,.0f} "
              f"{r['peak_allocated_gib'] or 0:>15} {r['peak_reserved_gib'] or 0:>18}")  # fmt: skip
    for line in verdict(results) if not args.smoke_cpu else ["(smoke run on CPU: figures mean nothing)"]:
        print(line)
    if not args.skip_e2e and not args.smoke_cpu:
        results["end_to_end"] = end_to_end(work / "e2e")
        print("end to end:", json.dumps(results["end_to_end"]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
