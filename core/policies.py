"""The release policies as typed settings: the gate a candidate must pass, and the canary analysis that
promotes or rolls it back. `registry.gate` and `deploy.analysis` apply them; `Settings.cycle` holds them, so a
bad value fails when the settings load, naming its `TUNELOOP_CYCLE__GATE__...` or `...__CANARY__...` variable.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class GatePolicy(BaseModel):
    """Thresholds of the gate; None turns a check off."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_mean_score: float = Field(4.0, ge=1.0, le=5.0, description="Lowest mean 1-5 judge score on the eval split.")
    max_drop_vs_production: float | None = Field(
        0.1, ge=0.0, le=4.0, description="How far (in 1-5 score units) the mean may fall below production's.")
    min_pairwise_win_rate: float | None = Field(
        0.5, ge=0.0, le=1.0, description="Lowest (wins + ties/2) / pairs against production; 0.5 = on par.")
    max_regression_drop_points: float | None = Field(
        5.0, ge=0.0, le=100.0,
        description="Largest drop on the regression set vs the base model, in points: the 1-5 mean mapped to "
                    "0-100 (1 -> 0, 5 -> 100), so 5 points = 0.2 of a score.")
    min_golden_score: float | None = Field(
        4.0, ge=1.0, le=5.0, description="Lowest mean 1-5 judge score on the golden set alone (when one is given).")
    max_failure_rate: float = Field(
        0.1, ge=0.0, le=1.0, description="Largest share of examples per report that failed to answer or be judged.")
    min_examples: int = Field(1, ge=1, description="Fewest scored examples an eval split may have.")


class CanaryPolicy(BaseModel):
    """When a canary is promoted, rolled back, or left running to gather more traffic."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_requests: int = Field(200, ge=0, description="Per arm, before the error and latency checks can pass.")
    min_ratings: int = Field(
        30, ge=0, description="Thumbs up + down per arm before the thumbs-down check can pass (0: not required).")
    max_error_rate_increase: float = Field(
        0.01, ge=0.0, le=1.0, description="Absolute, e.g. 0.01 = one percentage point.")
    max_thumbs_down_rate_increase: float = Field(
        0.05, ge=0.0, le=1.0, description="Absolute share of thumbs-down among ratings.")
    alpha: float = Field(0.05, gt=0.0, lt=1.0, description="Significance level of the one-sided tests.")
    max_p95_latency_ratio: float | None = Field(
        1.5, ge=1.0, description="Canary p95 / production p95; None: latency not checked.")
    require_non_inferiority: bool = Field(
        False, description="ok needs the confidence bound (not just the estimate) within the allowance.")
    stages: tuple[int, ...] = Field(
        (), description="Weights (1-99) a passing canary steps through before promotion, e.g. [50].")
    require_better_thumbs: bool = Field(
        False, description="Promote only when the canary's thumbs-up rate is significantly higher.")
    better_alpha: float = Field(0.01, gt=0.0, lt=1.0, description="Significance level of that one-sided test.")

    @field_validator("min_requests", "min_ratings", mode="before")
    @classmethod
    def _counts_are_integers(cls, value: Any) -> Any:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"must be an integer >= 0, got {value!r}")
        return value

    @field_validator("stages")
    @classmethod
    def _stages_rise(cls, stages: tuple[int, ...]) -> tuple[int, ...]:
        if any(not 1 <= s <= 99 for s in stages):
            raise ValueError(f"weights must be integers from 1 to 99 (promotion is 100), got {stages!r}")
        if list(stages) != sorted(set(stages)):
            raise ValueError(f"must be strictly increasing, got {stages!r}")
        return stages

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CanaryPolicy:
        unknown = sorted(set(data) - set(cls.model_fields))
        if unknown:
            raise ValueError(f"canary policy: unknown field(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(cls.model_fields))}")
        return cls.model_validate(data)

    def to_dict(self) -> dict[str, Any]:
        return {**self.model_dump(), "stages": list(self.stages)}
