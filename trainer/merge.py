"""Merging a run's adapter into a self-contained checkpoint, refused unless its logits match the adapter model's.

For a 4-bit (QLoRA) run the base is loaded 4-bit as trained, the adapter model's logits are taken as the
reference, then the base is dequantized and the adapter merged into the dequantized weights: measured, this
keeps greedy outputs 100% identical, while merging into the 4-bit model or the original full-precision base
changed 10-18% (trainer/README.md, "Reference recipe and measurements").
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from core.chat_format import EVAL_FILE
from core.clock import utcnow
from trainer.rundir import read_run

# Generic chats always in the probe batch, so a merge is checked even when the run's dataset is gone.
FIXED_PROBES = (
    [{"role": "user", "content": "What is the status of order 4821?"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name three colors."}],
    [{"role": "user", "content": "Give me the total price of the last order as JSON."}],
)
# Two checks. The merge itself, in float32 before any rounding, must match the adapter model tightly (the
# float32 row). The stored checkpoint, reloaded, is then held to its dtype's row: max |logit difference|
# relative to the largest |logit| (at least 1), the least top-1 agreement, and the top-1 margin (relative to
# the largest |logit|) below which a position is a near-tie that rounding may flip and does not count.
# Measured on SmolLM2-135M, LoRA merged and stored in bf16 (max |logit| ~44), compared computing in fp32:
#   first cycle (merge into the converted base):  max |diff| 0.72-1.10, median per position 0.43,
#     19 of 662 positions flipped, all with a top-1 margin under 0.46 (1.0 %): 100 % over the others;
#   second cycle (merge into the first's merged model): max |diff| 3.84, median 0.78, p99 3.0; 27 flips,
#     all with a margin under 0.52 (1.1 %): 98.6 % over the 553 others.
# Rounding 135 M weights to bf16 moves single logits by several units while keeping greedy choices, so the
# 16-bit rows bound the max difference loosely (a broken cast moves logits by tens) and rely on top-1.
TOLERANCES = {"float32": (1e-3, 0.999, 0.0), "bfloat16": (0.15, 0.98, 1.2e-2), "float16": (0.1, 0.98, 6e-3)}
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class MergeMismatchError(RuntimeError):
    """The merged checkpoint's logits differ from the adapter model's beyond tolerance; nothing was written."""


@dataclass
class EquivalenceReport:
    """How closely a candidate's logits follow the reference's on the probe batch."""

    positions: int
    decided_positions: int  # positions that count for top-1 agreement (not near-ties)
    raw_top1_agreement: float  # over every position, near-ties included
    max_abs_diff: float
    reference_max_abs: float
    allowed_abs_diff: float
    top1_agreement: float
    min_top1_agreement: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_logits(
    reference: list[torch.Tensor], candidate: list[torch.Tensor], *, rtol: float, min_top1: float,
    tie_margin: float = 0.0,
) -> EquivalenceReport:
    """Pure comparison of per-probe logits ([seq, vocab] each) under a relative tolerance and top-1 agreement
    (over positions whose reference top-1 margin is at least `tie_margin` x the largest |logit|)."""
    ref = torch.cat([r.float().reshape(-1, r.shape[-1]) for r in reference])
    cand = torch.cat([c.float().reshape(-1, c.shape[-1]) for c in candidate])
    if ref.shape != cand.shape:
        raise MergeMismatchError(f"probe logits have different shapes: {tuple(ref.shape)} vs {tuple(cand.shape)}")
    max_diff = (ref - cand).abs().max().item()
    ref_max = ref.abs().max().item()
    allowed = rtol * max(1.0, ref_max)
    top2 = ref.topk(2, dim=-1).values
    decided = (top2[:, 0] - top2[:, 1]) >= tie_margin * max(1.0, ref_max)
    same = ref.argmax(-1) == cand.argmax(-1)
    agreement = same[decided].float().mean().item() if bool(decided.any()) else 1.0
    finite = bool(torch.isfinite(cand).all())
    return EquivalenceReport(
        positions=ref.shape[0],
        decided_positions=int(decided.sum().item()),
        raw_top1_agreement=same.float().mean().item(),
        max_abs_diff=max_diff,
        reference_max_abs=ref_max,
        allowed_abs_diff=allowed,
        top1_agreement=agreement,
        min_top1_agreement=min_top1,
        passed=finite and max_diff <= allowed and agreement >= min_top1,
    )


def probe_conversations(metadata: dict[str, Any], limit: int = 8) -> list[list[dict[str, str]]]:
    """Up to `limit` conversations from the run's eval split (when still on disk) plus the fixed probes."""
    from trainer.data import DatasetError, read_split

    probes: list[list[dict[str, str]]] = []
    dataset_path = metadata.get("dataset", {}).get("path")
    if dataset_path:
        try:
            probes = read_split(Path(dataset_path) / EVAL_FILE)[:limit]
        except DatasetError:
            probes = []
    return probes + [list(p) for p in FIXED_PROBES]


def probe_inputs(tokenizer: Any, conversations: list[list[dict[str, str]]]) -> list[torch.Tensor]:
    return [
        tokenizer.apply_chat_template(conv, return_tensors="pt", return_dict=True)["input_ids"]
        for conv in conversations
    ]


@torch.no_grad()
def probe_logits(model: Any, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    model.eval()
    device = next(model.parameters()).device
    return [model(input_ids=ids.to(device), use_cache=False).logits[0].float().cpu() for ids in inputs]


def _load_adapter_model(base_model: str, adapter_dir: Path, quantization: str, device: str) -> Any:
    """The adapter on its base as trained (4-bit stays 4-bit), computing in float32: the most exact reference."""
    from peft import PeftModel

    from trainer.modeling import load_base_model

    base = load_base_model(base_model, device=device, quantization=quantization, compute_dtype="float32")
    return PeftModel.from_pretrained(base, str(adapter_dir)).eval()


def checkpoint_dtype(base_model: str) -> str:
    """The dtype the base was published in (merged checkpoints keep it: bf16 for real models)."""
    config_path = Path(base_model) / "config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
    else:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(base_model).to_dict()
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    return dtype if dtype in TOLERANCES else "float32"


def _merge(adapter_model: Any, adapter_dir: Path, quantized: bool) -> Any:
    """merge_and_unload; for a 4-bit base, into the dequantized weights the adapter was trained against."""
    if not quantized:
        return adapter_model.merge_and_unload()
    from peft import PeftModel

    base = adapter_model.unload()
    base = base.dequantize()
    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()


def _check_equivalence(
    reference: list[torch.Tensor], candidate_dir: Path, inputs: list[torch.Tensor], dtype: str, device: str
) -> EquivalenceReport:
    from transformers import AutoModelForCausalLM

    # Stored weights are compared, computing in float32 like the reference: what the check is about is whether
    # the checkpoint holds the trained model up to its storage dtype's rounding. Running it in bf16 as well adds
    # the compute noise of 30 layers of bf16 arithmetic (SmolLM2-135M: max |diff| 2.4 of 44, 98.4 % top-1),
    # which any bf16 server adds to the unmerged adapter model just the same.
    candidate = AutoModelForCausalLM.from_pretrained(str(candidate_dir), dtype=torch.float32).to(device)
    rtol, min_top1, tie_margin = TOLERANCES[dtype]
    report = compare_logits(reference, probe_logits(candidate, inputs), rtol=rtol, min_top1=min_top1,
                            tie_margin=tie_margin)
    del candidate
    return report


def check_against_adapter(
    candidate_dir: str | Path, run_dir_or_adapter_dir: str | Path, *, device: str | None = None
) -> EquivalenceReport:
    """Compare any checkpoint's logits with the run's adapter model (the merge check, usable on its own)."""
    from trainer.modeling import load_tokenizer

    _, adapter_dir, metadata = read_run(run_dir_or_adapter_dir)
    base_model = json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    quantization = metadata.get("resolved", {}).get("quantization", "none")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    inputs = probe_inputs(load_tokenizer(adapter_dir), probe_conversations(metadata))
    reference = probe_logits(_load_adapter_model(base_model, adapter_dir, quantization, device), inputs)
    return _check_equivalence(reference, Path(candidate_dir), inputs, checkpoint_dtype(base_model), device)


def merge_adapter(run_dir_or_adapter_dir: str | Path, out_dir: str | Path, *, device: str | None = None) -> Path:
    """Merge a run's adapter into a self-contained safetensors checkpoint (with tokenizer and chat template).

    The merge happens in float32 and its logits must match the adapter model's on a probe batch within the
    float32 tolerance; it is then saved in the base's own dtype, reloaded, and held to that dtype's tolerance.
    On a mismatch MergeMismatchError is raised and `out_dir` is not created.
    """
    from trainer.modeling import DTYPES, load_tokenizer

    run_dir, adapter_dir, metadata = read_run(run_dir_or_adapter_dir)
    out = Path(out_dir).resolve()
    if out.exists():
        raise FileExistsError(f"{out} already exists; merge into a new directory")
    base_model = json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    quantization = metadata.get("resolved", {}).get("quantization", "none")
    dtype = checkpoint_dtype(base_model)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")

    tokenizer = load_tokenizer(adapter_dir)
    inputs = probe_inputs(tokenizer, probe_conversations(metadata))
    adapter_model = _load_adapter_model(base_model, adapter_dir, quantization, device)
    reference = probe_logits(adapter_model, inputs)
    merged = _merge(adapter_model, adapter_dir, quantization == "nf4").float()
    rtol, min_top1, tie_margin = TOLERANCES["float32"]
    exact = compare_logits(reference, probe_logits(merged, inputs), rtol=rtol, min_top1=min_top1,
                           tie_margin=tie_margin)
    if not exact.passed:
        raise MergeMismatchError(f"the float32 merge differs from the adapter model: {_describe(exact)}; "
                                 "merge refused")
    merged = merged.to(DTYPES[dtype])

    partial = out.parent / f".partial-{out.name}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        merged.save_pretrained(str(partial), safe_serialization=True)
        tokenizer.save_pretrained(str(partial))
        del merged, adapter_model
        report = _check_equivalence(reference, partial, inputs, dtype, device)
        if not report.passed:
            raise MergeMismatchError(f"the merged checkpoint stored in {dtype} differs from the adapter "
                                     f"model: {_describe(report)}; merge refused")
        info = {
            "source_run": metadata.get("run_id", run_dir.name),
            "adapter_dir": str(adapter_dir),
            "base_model": base_model,
            "quantization": quantization,
            "method": "dequantize+merge_and_unload" if quantization == "nf4" else "merge_and_unload",
            "dtype": dtype,
            "equivalence": report.to_dict(),
            "float32_merge_equivalence": exact.to_dict(),
            "merged_at": utcnow().isoformat(),
        }
        (partial / "merge.json").write_text(json.dumps(info, indent=2))
        os.replace(partial, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return out


def _describe(report: EquivalenceReport) -> str:
    return (f"max |diff| {report.max_abs_diff:.4g} (allowed {report.allowed_abs_diff:.4g}), top-1 agreement "
            f"{report.top1_agreement:.4f} over {report.decided_positions} of {report.positions} positions "
            f"(need {report.min_top1_agreement})")


def export_adapter(run_dir_or_adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Copy the adapter alone (weights, config with absolute base path, tokenizer) for hot-loading into vLLM."""
    _, adapter_dir, _ = read_run(run_dir_or_adapter_dir)
    out = Path(out_dir).resolve()
    if out.exists():
        raise FileExistsError(f"{out} already exists")
    partial = out.parent / f".partial-{out.name}"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(adapter_dir, partial)
    missing = [name for name in ADAPTER_FILES if not (partial / name).is_file()]
    if missing:
        shutil.rmtree(partial)
        raise FileNotFoundError(f"{adapter_dir} lacks {', '.join(missing)}")
    os.replace(partial, out)
    return out
