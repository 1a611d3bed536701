"""KTO and DPO: the auto rule and KTO's settings (pure), config errors, and real runs on the tiny random model
that learn something measurable: the loss falls and held-out chosen answers gain log-probability over
rejected ones, measured against the same base with no adapter (the control)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.config import ConfigError, TrainConfig
from trainer.data import write_dataset_version
from trainer.demo_task import make_examples
from trainer.evaluate import completion_logprob, load_for_generation
from trainer.methods import ViewSizes, choose_method, kto_weights, plan_method
from trainer.train import TrainResult, plan, train


def test_auto_takes_kto_when_uncorrected_thumbs_down_are_a_third_of_the_ratings() -> None:
    thumbs_only = ViewSizes(sft=40, kto_desirable=40, kto_undesirable=60, thumbs_up=40, thumbs_down=60)
    assert choose_method("auto", thumbs_only)[0] == "kto"
    mostly_corrected = ViewSizes(sft=70, kto_desirable=70, kto_undesirable=40, thumbs_up=40, thumbs_down=40,
                                 corrections=30)  # 10 uncorrected of 80 rated
    assert choose_method("auto", mostly_corrected)[0] == "sft"
    the_demo = ViewSizes(sft=180, kto_desirable=180, kto_undesirable=240, thumbs_down=240, corrections=180)
    assert choose_method("auto", the_demo)[0] == "sft"  # 25 % uncorrected: corrections teach answers best
    too_few_ups = ViewSizes(sft=3, kto_desirable=3, kto_undesirable=60, thumbs_up=3, thumbs_down=60)
    assert choose_method("auto", too_few_ups)[0] == "sft"
    assert choose_method("auto", ViewSizes(kto_desirable=2, kto_undesirable=5))[0] == "kto"
    assert choose_method("auto", ViewSizes(dpo=4))[0] == "dpo"
    with pytest.raises(ConfigError, match="method: the dataset has nothing to train on"):
        choose_method("auto", ViewSizes())
    with pytest.raises(ConfigError, match="method: dpo was asked for but the dataset's dpo view has no train rows"):
        choose_method("dpo", ViewSizes(sft=10))


def test_kto_weights_balance_the_classes_and_mostly_negative_data_halves_the_rate() -> None:
    for desirable, undesirable in ((30, 90), (90, 30), (50, 50)):
        w_d, w_u = kto_weights(desirable, undesirable)
        assert min(w_d, w_u) == 1.0
        assert 1.0 <= (w_d * desirable) / (w_u * undesirable) <= 4 / 3 + 1e-9  # TRL's recommended range
    mostly_negative = plan_method("kto", ViewSizes(kto_desirable=20, kto_undesirable=80), batch_size=4)
    assert (mostly_negative.desirable_weight, mostly_negative.lr_scale) == (4.0, 0.5)
    balanced = plan_method("kto", ViewSizes(kto_desirable=50, kto_undesirable=50), batch_size=4)
    assert balanced.lr_scale == 1.0
    with pytest.raises(ConfigError, match="batch_size: kto needs a micro-batch of at least 2"):
        plan_method("auto", ViewSizes(kto_desirable=20, kto_undesirable=80, thumbs_up=20, thumbs_down=80), 1)


def test_config_refuses_what_kto_and_dpo_cannot_run() -> None:
    with pytest.raises(ConfigError, match="batch_size: kto needs a micro-batch of at least 2"):
        TrainConfig(method="kto", batch_size=1)
    with pytest.raises(ConfigError, match="method: must be one of auto, sft, kto, dpo"):
        TrainConfig(method="ppo")
    with pytest.raises(ConfigError, match="target_modules: lm_head cannot take an adapter"):
        TrainConfig(method="dpo", target_modules=["q_proj", "lm_head"])
    with pytest.raises(ConfigError, match="beta: must be > 0"):
        TrainConfig(beta=0)


def _wrong(example: dict) -> str:
    """The reference answer with another status: right format, wrong content."""
    answer = json.loads(example["messages"][-1]["content"])
    return json.dumps({**answer, "status": "cancelled" if answer["status"] != "cancelled" else "pending"})


def _rows(method: str, examples: list[dict]) -> list[dict]:
    rows = []
    for example in examples:
        prompt, right = example["messages"][:-1], example["messages"][-1]["content"]
        if method == "kto":
            rows += [{"prompt": prompt, "completion": right, "label": True},
                     {"prompt": prompt, "completion": _wrong(example), "label": False}]
        else:
            rows.append({"prompt": prompt, "chosen": right, "rejected": _wrong(example)})
    return rows


@pytest.fixture(scope="module")
def held_out_pairs() -> list[dict]:
    return make_examples(16, seed=3)


def _margins(model_dir: Path, pairs: list[dict], adapter: Path | None) -> list[float]:
    model, tokenizer = load_for_generation(model_dir, adapter_dir=adapter)
    return [completion_logprob(model, tokenizer, ex["messages"][:-1], ex["messages"][-1]["content"])
            - completion_logprob(model, tokenizer, ex["messages"][:-1], _wrong(ex)) for ex in pairs]


def _run(method: str, demo_model_dir: Path, tmp_path: Path, n: int) -> TrainResult:
    views = {method: (_rows(method, make_examples(n, seed=1)), _rows(method, make_examples(8, seed=2)))}
    dataset = write_dataset_version(tmp_path / "ds", f"ds-{method}", [], [], views=views)
    config = TrainConfig(base_model=str(demo_model_dir), output_dir=str(tmp_path / "runs"), method="auto",
                         epochs=3, batch_size=4)
    assert plan(config, dataset).method.method == method  # auto finds the only view with rows
    return train(config, dataset, progress=False)


@pytest.mark.parametrize(("method", "n"), [("kto", 30), ("dpo", 60)])
def test_a_preference_run_learns_to_prefer_the_chosen_answers(
    method: str, n: int, demo_model_dir: Path, tmp_path: Path, held_out_pairs: list[dict]
) -> None:
    result = _run(method, demo_model_dir, tmp_path, n)
    meta = result.metadata
    assert meta["method"]["method"] == method and meta["dataset"]["view"] == method
    losses = [point["loss"] for point in meta["loss_curve"]["train"]]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 * 0.85, losses
    before = _margins(demo_model_dir, held_out_pairs, None)
    after = _margins(demo_model_dir, held_out_pairs, result.adapter_dir)
    assert sum(after) / len(after) > sum(before) / len(before) + 5.0, (before, after)
    assert sum(a > b for a, b in zip(after, before, strict=True)) >= 12
    adapter_config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(demo_model_dir.resolve())
