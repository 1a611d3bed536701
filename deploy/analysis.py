"""Canary analysis: a pure function from the two arms' figures and a policy to promote, rollback or wait.

Three checks, each ok / worse / unknown:
- error rate and thumbs-down rate: the canary is *worse* when its rate exceeds production's by more than the
  allowed increase AND Fisher's exact test (one-sided, canary > production) is significant; an increase
  above the allowance that is not (yet) significant is *unknown* (more data decides). With
  `require_non_inferiority`, *ok* also needs the Agresti-Caffo upper confidence bound of the increase to be
  within the allowance (strict: needs many samples), else plain "observed within the allowance" is ok.
- p95 latency: worse when canary p95 / production p95 exceeds the allowed ratio (None: not checked, for
  arms that share their hardware, where one arm's latency follows the other's load).
- thumbs-up gain: Fisher's exact test (one-sided, canary thumbs-up rate > production's), always reported.
  With `require_better_thumbs` it decides too: ok only when p < `better_alpha`, else unknown (wait), so a
  canary is promoted because users like it better, not merely because it is not worse.
Any worse -> rollback; all ok -> promote; else wait. Too few requests or ratings on an arm -> that check is
unknown, so the decision is wait unless another check already shows the canary worse.

A canary arm with no requests at all in the window gets a first reason that says so ("no canary traffic",
with how long the stage has run and the canary weight, when the caller passes them), so a stage that no
traffic reaches is visible instead of a silent wait; it changes no decision.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from scipy.stats import fisher_exact, norm

from core.policies import CanaryPolicy


class Action(StrEnum):
    promote = "promote"
    rollback = "rollback"
    wait = "wait"
    advance = "advance"  # the controller's: a promote verdict below the last stage raises the weight instead


class Verdict(StrEnum):
    ok = "ok"
    worse = "worse"
    unknown = "unknown"


@dataclass(frozen=True)
class ArmFigures:
    """One arm's traffic over the analysis window, from the interaction log."""

    version_id: str
    requests: int = 0  # interactions served by this version (gateway refusals excluded)
    errors: int = 0  # of those, upstream failures
    thumbs_up: int = 0
    thumbs_down: int = 0
    p95_latency_ms: float | None = None
    latency_samples: int = 0  # successful requests behind the p95
    p50_latency_ms: float | None = None  # shown beside the p95 (the console); no check reads it

    def __post_init__(self) -> None:
        for name in ("requests", "errors", "thumbs_up", "thumbs_down", "latency_samples"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0 (arm {self.version_id})")
        if self.errors > self.requests:
            raise ValueError(f"errors: {self.errors} > requests {self.requests} (arm {self.version_id})")

    @property
    def ratings(self) -> int:
        return self.thumbs_up + self.thumbs_down

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def thumbs_up_rate(self) -> float | None:
        return self.thumbs_up / self.ratings if self.ratings else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Check:
    name: str  # errors | thumbs_down | latency | thumbs_up_gain
    verdict: Verdict
    reason: str
    production: float | None = None
    canary: float | None = None
    p_value: float | None = None


@dataclass(frozen=True)
class Analysis:
    action: Action
    reasons: tuple[str, ...]
    checks: tuple[Check, ...]
    no_canary_traffic: bool = False  # the canary arm served no request in the window (reasons[0] says so)

    def to_dict(self) -> dict[str, Any]:
        return {"action": str(self.action), "reasons": list(self.reasons),
                "checks": [{**asdict(c), "verdict": str(c.verdict)} for c in self.checks],
                "no_canary_traffic": self.no_canary_traffic}


NO_CANARY_TRAFFIC = "no canary traffic"


def no_canary_traffic_reason(canary: ArmFigures, canary_weight: int | None = None,
                             stage_running_s: float | None = None) -> str:
    """Why a stage is waiting although nothing will ever arrive, e.g. "no canary traffic: assistant-v2 has
    served 0 requests in this stage (running 2h 05m at canary weight 20%)"."""
    facts = []
    if stage_running_s is not None:
        facts.append(f"running {format_duration(stage_running_s)}")
    if canary_weight is not None:
        facts.append(f"at canary weight {canary_weight}%")
    text = f"{NO_CANARY_TRAFFIC}: {canary.version_id} has served 0 requests in this stage"
    if facts:
        text += f" ({' '.join(facts)})"
    if canary_weight == 0:
        return text + "; weight 0% sends it nothing"
    return text + "; check that its server is running and that apps call the alias"


def format_duration(seconds: float) -> str:
    """45s, 12m 30s, 3h 05m, 2d 04h."""
    total = max(int(seconds), 0)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def analyse(production: ArmFigures, canary: ArmFigures, policy: CanaryPolicy, *, canary_weight: int | None = None,
            stage_running_s: float | None = None) -> Analysis:
    """Decide on a canary from the two arms' figures over the same window.

    `canary_weight` and `stage_running_s` (how long the window has been open) only word the "no canary
    traffic" reason; they never change the decision.
    """
    checks = (
        _rate_check("errors", "error rate", production.errors, production.requests, canary.errors, canary.requests,
                    policy.min_requests, policy.max_error_rate_increase, policy),
        _rate_check("thumbs_down", "thumbs-down rate", production.thumbs_down, production.ratings,
                    canary.thumbs_down, canary.ratings, policy.min_ratings, policy.max_thumbs_down_rate_increase,
                    policy),
        _latency_check(production, canary, policy),
        _gain_check(production, canary, policy),
    )
    silent = canary.requests == 0
    first = (no_canary_traffic_reason(canary, canary_weight, stage_running_s),) if silent else ()
    worse = [c.reason for c in checks if c.verdict == Verdict.worse]
    if worse:
        return Analysis(Action.rollback, first + tuple(worse), checks, silent)
    unknown = [c.reason for c in checks if c.verdict == Verdict.unknown]
    if unknown:
        return Analysis(Action.wait, first + tuple(unknown), checks, silent)
    return Analysis(Action.promote, first + tuple(c.reason for c in checks), checks, silent)


def _rate_check(name: str, label: str, bad_p: int, n_p: int, bad_c: int, n_c: int, minimum: int,
                allowance: float, policy: CanaryPolicy) -> Check:
    if minimum == 0 and (n_p == 0 or n_c == 0):
        return Check(name, Verdict.ok, f"{label}: no samples on an arm, none required")
    if n_p < max(minimum, 1) or n_c < max(minimum, 1):
        return Check(name, Verdict.unknown,
                     f"{label}: too few samples (production {n_p}, canary {n_c}; need {max(minimum, 1)} each)")
    rate_p, rate_c = bad_p / n_p, bad_c / n_c
    increase = rate_c - rate_p
    p_value = float(fisher_exact([[bad_c, n_c - bad_c], [bad_p, n_p - bad_p]], alternative="greater").pvalue)
    figures = (f"{label} canary {rate_c:.1%} ({bad_c}/{n_c}) vs production {rate_p:.1%} ({bad_p}/{n_p}), "
               f"Fisher one-sided p={p_value:.3g}")
    if increase > allowance:
        if p_value < policy.alpha:
            return Check(name, Verdict.worse, f"{figures}: +{increase:.1%} exceeds the allowed +{allowance:.1%}",
                         rate_p, rate_c, p_value)
        return Check(name, Verdict.unknown,
                     f"{figures}: +{increase:.1%} above the allowed +{allowance:.1%} but not significant yet",
                     rate_p, rate_c, p_value)
    if policy.require_non_inferiority:
        upper = _agresti_caffo_upper(bad_c, n_c, bad_p, n_p, policy.alpha)
        if upper > allowance:
            return Check(name, Verdict.unknown,
                         f"{figures}: upper bound of the increase {upper:+.1%} not yet within +{allowance:.1%}",
                         rate_p, rate_c, p_value)
    return Check(name, Verdict.ok, f"{figures}: within the allowed +{allowance:.1%}", rate_p, rate_c, p_value)


def _gain_check(production: ArmFigures, canary: ArmFigures, policy: CanaryPolicy) -> Check:
    n_p, n_c, up_p, up_c = production.ratings, canary.ratings, production.thumbs_up, canary.thumbs_up
    need = max(policy.min_ratings, 1)
    if n_p < need or n_c < need:
        verdict = Verdict.unknown if policy.require_better_thumbs else Verdict.ok
        return Check("thumbs_up_gain", verdict,
                     f"thumbs-up gain: too few ratings (production {n_p}, canary {n_c}; need {need} each)")
    rate_p, rate_c = up_p / n_p, up_c / n_c
    p_value = float(fisher_exact([[up_c, n_c - up_c], [up_p, n_p - up_p]], alternative="greater").pvalue)
    text = (f"thumbs-up rate canary {rate_c:.1%} ({up_c}/{n_c}) vs production {rate_p:.1%} ({up_p}/{n_p}), "
            f"Fisher one-sided p={p_value:.3g}")
    if not policy.require_better_thumbs:
        return Check("thumbs_up_gain", Verdict.ok, f"{text} (a gain is not required)", rate_p, rate_c, p_value)
    if p_value < policy.better_alpha:
        return Check("thumbs_up_gain", Verdict.ok, f"{text}: better at p < {policy.better_alpha:g}",
                     rate_p, rate_c, p_value)
    return Check("thumbs_up_gain", Verdict.unknown, f"{text}: not shown better yet (need p < {policy.better_alpha:g})",
                 rate_p, rate_c, p_value)


def _agresti_caffo_upper(bad_c: int, n_c: int, bad_p: int, n_p: int, alpha: float) -> float:
    """One-sided upper confidence bound of rate_c - rate_p (adds one success and one failure per arm, which
    keeps the interval honest at rates of 0 or 1)."""
    pc, pp = (bad_c + 1) / (n_c + 2), (bad_p + 1) / (n_p + 2)
    se = math.sqrt(pc * (1 - pc) / (n_c + 2) + pp * (1 - pp) / (n_p + 2))
    return (pc - pp) + float(norm.ppf(1 - alpha)) * se


def _latency_check(production: ArmFigures, canary: ArmFigures, policy: CanaryPolicy) -> Check:
    if policy.max_p95_latency_ratio is None:
        return Check("latency", Verdict.ok, "p95 latency: not checked (max_p95_latency_ratio is off)",
                     production.p95_latency_ms, canary.p95_latency_ms)
    need = max(policy.min_requests, 1)
    if (production.latency_samples < need or canary.latency_samples < need
            or production.p95_latency_ms is None or canary.p95_latency_ms is None):
        return Check("latency", Verdict.unknown,
                     f"p95 latency: too few successful requests (production {production.latency_samples}, "
                     f"canary {canary.latency_samples}; need {need} each)")
    ratio = canary.p95_latency_ms / max(production.p95_latency_ms, 1e-6)
    text = (f"p95 latency canary {canary.p95_latency_ms:.0f} ms vs production {production.p95_latency_ms:.0f} ms "
            f"(x{ratio:.2f}, allowed x{policy.max_p95_latency_ratio:.2f})")
    verdict = Verdict.worse if ratio > policy.max_p95_latency_ratio else Verdict.ok
    return Check("latency", verdict, text, production.p95_latency_ms, canary.p95_latency_ms)
