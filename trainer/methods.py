"""Which training method a dataset version gets, and KTO's data-dependent settings: pure functions.

The rule of `method: auto` (from the view sizes in the dataset's manifest):
  1. kto   when at least a third of the rated answers are thumbs-down nobody corrected (SFT drops them all)
           and the kto view has at least MIN_ROWS_PER_LABEL rows of each label;
  2. sft   when the sft view has rows (thumbs-up answers and corrections, the strongest teacher of answers);
  3. kto   when it has rows of both labels at all, else dpo when it has pairs;
  otherwise the version has nothing to train on.
KTO's own constraints (TRL's KTOTrainer and the KTO paper's advice), applied whatever chose the method:
  - the micro-batch must be > 1 (its KL estimate pairs each row with another row of the batch);
  - desirable/undesirable weights make weight x count of the two classes equal (TRL recommends a ratio in
    [1, 4/3]): the rarer class is weighted up, the commoner one keeps 1;
  - when most of the data is negative the learning rate is halved (pushing answers down alone moves
    probability mass somewhere nobody rated).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from trainer.config import ConfigError

MIN_ROWS_PER_LABEL = 8
UNCORRECTED_SHARE_FOR_KTO = 1 / 3
MOSTLY_NEGATIVE = 2 / 3  # undesirable share above which KTO's learning rate is halved
NEGATIVE_LR_SCALE = 0.5


@dataclass(frozen=True)
class ViewSizes:
    """Train-split rows of each view, and what the kto view was built from (its `selected` counts)."""

    sft: int = 0
    kto_desirable: int = 0
    kto_undesirable: int = 0
    dpo: int = 0
    thumbs_up: int = 0
    thumbs_down: int = 0
    corrections: int = 0

    @classmethod
    def from_counts(cls, counts: dict[str, Any], n_sft_train: int) -> ViewSizes:
        views = counts.get("views", {})
        kto, dpo = views.get("kto", {}), views.get("dpo", {})
        labels, selected = kto.get("labels", {}), kto.get("selected", {})
        return cls(
            sft=n_sft_train, kto_desirable=int(labels.get("desirable", 0)),
            kto_undesirable=int(labels.get("undesirable", 0)), dpo=int(dpo.get("split", {}).get("train", 0)),
            thumbs_up=int(selected.get("thumbs_up", 0)), thumbs_down=int(selected.get("thumbs_down", 0)),
            corrections=int(selected.get("correction", 0)),
        )

    @property
    def uncorrected_share(self) -> float:
        rated = self.thumbs_up + self.thumbs_down
        return max(self.thumbs_down - self.corrections, 0) / rated if rated else 0.0


@dataclass(frozen=True)
class MethodPlan:
    """The method a run uses, why, and the method's data-dependent settings."""

    method: str
    reason: str
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    lr_scale: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_method(requested: str, sizes: ViewSizes) -> tuple[str, str]:
    """(method, reason) for a requested method ("auto" applies the module's rule); ConfigError when the view
    the method needs is empty."""
    if requested != "auto":
        rows = {"sft": sizes.sft, "kto": sizes.kto_desirable + sizes.kto_undesirable, "dpo": sizes.dpo}[requested]
        if rows == 0:
            raise ConfigError("method", f"{requested} was asked for but the dataset's {requested} view has no "
                              "train rows")
        return requested, "asked for"
    both_labels = min(sizes.kto_desirable, sizes.kto_undesirable)
    if sizes.uncorrected_share >= UNCORRECTED_SHARE_FOR_KTO and both_labels >= MIN_ROWS_PER_LABEL:
        return "kto", (f"{sizes.uncorrected_share:.0%} of rated answers are uncorrected thumbs-down that sft "
                       f"cannot use; kto has {sizes.kto_desirable} desirable / {sizes.kto_undesirable} undesirable")
    if sizes.sft:
        return "sft", f"{sizes.sft} chat examples; uncorrected thumbs-down {sizes.uncorrected_share:.0%} (< 1/3)"
    if both_labels:
        return "kto", "no chat examples; kto has rows of both labels"
    if sizes.dpo:
        return "dpo", "no chat examples; dpo has pairs"
    raise ConfigError("method", "the dataset has nothing to train on in any view")


def kto_weights(desirable: int, undesirable: int) -> tuple[float, float]:
    """(desirable_weight, undesirable_weight): the rarer class up-weighted so that weight x count is the same
    on both sides: a ratio of 1, the low end of the [1, 4/3] TRL recommends for desirable over undesirable."""
    if desirable <= 0 or undesirable <= 0:
        return 1.0, 1.0
    if desirable >= undesirable:
        return 1.0, round(desirable / undesirable, 4)
    return round(undesirable / desirable, 4), 1.0


def plan_method(requested: str, sizes: ViewSizes, batch_size: int) -> MethodPlan:
    method, reason = choose_method(requested, sizes)
    if method in ("kto", "dpo") and batch_size < 2:
        raise ConfigError("batch_size", f"{method} needs a micro-batch of at least 2 (got {batch_size})")
    if method != "kto":
        return MethodPlan(method, reason)
    desirable_weight, undesirable_weight = kto_weights(sizes.kto_desirable, sizes.kto_undesirable)
    total = sizes.kto_desirable + sizes.kto_undesirable
    mostly_negative = total > 0 and sizes.kto_undesirable / total > MOSTLY_NEGATIVE
    return MethodPlan(method, reason, desirable_weight, undesirable_weight,
                      NEGATIVE_LR_SCALE if mostly_negative else 1.0)
