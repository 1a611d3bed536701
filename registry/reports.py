"""What an evaluation produces: per-example results, an endpoint's report, and a pairwise comparison.

Plain pydantic data so reports are stored as JSON (files under HOME/evals, summaries on the version) and
the gate can be a pure function of them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

MIN_SCORE, MAX_SCORE = 1, 5


def score_to_points(score: float) -> float:
    """A 1-5 judge score on the 0-100 'points' scale: 1 -> 0, 3 -> 50, 5 -> 100.

    The forgetting rule ("general capability drops more than 5 points") is measured on this scale, so
    5 points is 0.2 of a judge score.
    """
    return (score - MIN_SCORE) / (MAX_SCORE - MIN_SCORE) * 100.0


class JudgeUsage(BaseModel):
    calls: int = 0  # requests that reached the judge (retries included)
    retries: int = 0
    cache_hits: int = 0
    input_tokens: int = 0
    output_tokens: int = 0

    def add(self, other: JudgeUsage) -> None:
        for name in type(self).model_fields:
            setattr(self, name, getattr(self, name) + getattr(other, name))


class ExampleResult(BaseModel):
    id: str
    question: str
    reference: str
    answer: str | None = None
    score: int | None = Field(default=None, ge=MIN_SCORE, le=MAX_SCORE)
    reason: str = ""
    error: str | None = Field(default=None, description="The endpoint failed; the example scores the minimum.")
    judge_error: str | None = Field(default=None, description="The judge failed; the example is not scored.")
    latency_ms: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class EvalReport(BaseModel):
    name: str = Field(description="Which set: eval (the dataset's eval split) or regression.")
    model: str
    base_url: str
    judge: str
    examples: list[ExampleResult] = Field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    judge_usage: JudgeUsage = Field(default_factory=JudgeUsage)
    started_at: datetime | None = None
    wall_s: float = 0.0

    @property
    def n(self) -> int:
        return len(self.examples)

    @property
    def scored(self) -> list[int]:
        return [e.score for e in self.examples if e.score is not None]

    @property
    def n_failed(self) -> int:
        """Examples the endpoint could not answer or the judge could not score."""
        return sum(1 for e in self.examples if e.error or e.judge_error)

    @property
    def mean_score(self) -> float | None:
        scores = self.scored
        return sum(scores) / len(scores) if scores else None

    @property
    def points(self) -> float | None:
        mean = self.mean_score
        return None if mean is None else score_to_points(mean)

    def subset(self, ids: set[str], name: str) -> EvalReport:
        """The same report over the examples whose id is in `ids` (e.g. the golden set within the eval run)."""
        examples = [e for e in self.examples if e.id in ids]
        return self.model_copy(update={"name": name, "examples": examples,
                                       "prompt_tokens": sum(e.prompt_tokens for e in examples),
                                       "completion_tokens": sum(e.completion_tokens for e in examples)})

    def summary(self) -> dict[str, Any]:
        """The report without its examples: what is stored on the model version."""
        histogram = {str(s): self.scored.count(s) for s in range(MIN_SCORE, MAX_SCORE + 1)}
        return {
            "name": self.name, "model": self.model, "base_url": self.base_url, "judge": self.judge,
            "n": self.n, "n_scored": len(self.scored), "n_failed": self.n_failed,
            "mean_score": self.mean_score, "points": self.points, "histogram": histogram,
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
            "judge_usage": self.judge_usage.model_dump(), "wall_s": round(self.wall_s, 3),
        }


PairOutcome = Literal["win", "tie", "loss"]


class PairResult(BaseModel):
    id: str
    first: Literal["A", "B", "tie"] | None = Field(None, description="Verdict with the candidate as A.")
    second: Literal["A", "B", "tie"] | None = Field(None, description="Verdict with the candidate as B.")
    outcome: PairOutcome | None = None
    reasons: list[str] = Field(default_factory=list)
    judge_error: str | None = None


class PairwiseReport(BaseModel):
    """Candidate vs production on the same prompts, each pair judged in both orders."""

    judge: str
    pairs: list[PairResult] = Field(default_factory=list)
    judge_usage: JudgeUsage = Field(default_factory=JudgeUsage)

    def _count(self, outcome: PairOutcome) -> int:
        return sum(1 for p in self.pairs if p.outcome == outcome)

    @property
    def n_decided(self) -> int:
        return sum(1 for p in self.pairs if p.outcome is not None)

    @property
    def wins(self) -> int:
        return self._count("win")

    @property
    def ties(self) -> int:
        return self._count("tie")

    @property
    def losses(self) -> int:
        return self._count("loss")

    @property
    def win_rate(self) -> float | None:
        """(wins + ties / 2) / decided pairs: 0.5 means as good as production."""
        n = self.n_decided
        return None if n == 0 else (self.wins + 0.5 * self.ties) / n

    def summary(self) -> dict[str, Any]:
        n = self.n_decided or 1
        return {
            "judge": self.judge, "n": len(self.pairs), "n_decided": self.n_decided,
            "wins": self.wins, "ties": self.ties, "losses": self.losses,
            "win_share": self.wins / n, "tie_share": self.ties / n, "loss_share": self.losses / n,
            "win_rate": self.win_rate, "judge_usage": self.judge_usage.model_dump(),
        }
