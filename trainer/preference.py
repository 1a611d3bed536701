"""KTO and DPO runs through TRL's trainers, with the same LoRA, checkpoints and metadata as SFT.

The reference model is the base itself with the adapter disabled (TRL does this when `ref_model` is None and
the model is a PEFT model): no second copy of the weights in memory. Rows are shuffled here, once, with the
run's seed: KTOTrainer reads them in order (its KL term pairs each row with a neighbour of its micro-batch),
so a dataset sorted by label would give batches of one class.
"""

from __future__ import annotations

import random
from typing import Any

from trainer.config import TrainConfig
from trainer.data import DatasetVersion
from trainer.methods import MethodPlan


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def trl_rows(method: str, rows: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """A view's rows in TRL's conversational form, in a seeded shuffled order. Pure."""
    if method == "kto":
        out = [{"prompt": r["prompt"], "completion": _assistant(r["completion"]), "label": r["label"]} for r in rows]
    else:
        out = [{"prompt": r["prompt"], "chosen": _assistant(r["chosen"]), "rejected": _assistant(r["rejected"])}
               for r in rows]
    random.Random(seed).shuffle(out)
    return out


def preference_trainer(
    method: MethodPlan, config: TrainConfig, common: dict[str, Any], model: Any, tokenizer: Any,
    dataset: DatasetVersion, peft_config: Any, callbacks: list[Any],
) -> Any:
    """A KTOTrainer or DPOTrainer over the dataset's view, ready to `train()`."""
    from datasets import Dataset

    if method.method == "kto":
        from trl import KTOConfig, KTOTrainer

        args = KTOConfig(**common, beta=config.beta, desirable_weight=method.desirable_weight,
                         undesirable_weight=method.undesirable_weight)
        trainer_class: Any = KTOTrainer
    else:
        from trl import DPOConfig, DPOTrainer

        args = DPOConfig(**common, beta=config.beta)
        trainer_class = DPOTrainer
    train = Dataset.from_list(trl_rows(method.method, dataset.train, config.seed))
    evaluation = Dataset.from_list(trl_rows(method.method, dataset.eval, config.seed)) if dataset.eval else None
    return trainer_class(
        model=model, ref_model=None, args=args, train_dataset=train, eval_dataset=evaluation,
        processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks,
    )
