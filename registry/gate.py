"""The promotion gate: a pure function of the eval reports and a policy.

A candidate may go to canary only when every check holds:
- its mean judge score on the dataset's eval split is at least `min_mean_score` (the reference recipe's 4.0,
  see registry/README.md);
- when a golden set (trusted examples) was given, its mean on that set alone is at least `min_golden_score`:
  the eval split comes from users' corrections, and a poisoned split would also poison the mean above;
- that mean is not below production's by more than `max_drop_vs_production`;
- head-to-head against production (both orders judged), its win rate is at least `min_pairwise_win_rate`;
- on the general regression set it lost at most `max_regression_drop_points` versus the base model
  (the reference recipe's forgetting rule: "more than 5 points");
- few enough examples failed (endpoint errors or unscorable judge answers) for the figures to mean something.
A check whose input was not evaluated fails, unless the policy turns that check off with None.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from core.policies import GatePolicy
from registry.reports import EvalReport, PairwiseReport, score_to_points


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reasons: list[str]
    figures: dict[str, Any]
    policy: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(
    candidate_report: EvalReport | None,
    production_report: EvalReport | None,
    pairwise: PairwiseReport | None,
    regression_candidate: EvalReport | None,
    regression_base: EvalReport | None,
    policy: GatePolicy | None = None,
    golden: EvalReport | None = None,
) -> GateDecision:
    """Apply every check of `policy`; each one adds a reason ("ok: ..." or "FAIL: ...")."""
    policy = policy or GatePolicy()
    checks: list[tuple[bool, str]] = []
    figures: dict[str, Any] = {}

    candidate_mean = candidate_report.mean_score if candidate_report else None
    figures["candidate_mean"] = candidate_mean
    if candidate_report is None or candidate_mean is None:
        checks.append((False, "candidate not evaluated on the eval split"))
    else:
        scored = len(candidate_report.scored)
        figures["candidate_scored"] = scored
        checks.append((scored >= policy.min_examples,
                       f"{scored} scored eval examples (minimum {policy.min_examples})"))
        checks.append((candidate_mean >= policy.min_mean_score,
                       f"mean score {candidate_mean:.2f} vs minimum {policy.min_mean_score:.2f}"))

    if policy.min_golden_score is not None and golden is not None:
        golden_mean = golden.mean_score
        figures["golden_mean"] = golden_mean
        checks.append((golden_mean is not None and golden_mean >= policy.min_golden_score,
                       f"golden set: mean score {golden_mean or 0:.2f} over {len(golden.scored)} trusted examples "
                       f"vs minimum {policy.min_golden_score:.2f}"))

    for label, report in (("candidate eval", candidate_report), ("production eval", production_report),
                          ("candidate regression", regression_candidate), ("base regression", regression_base)):
        if report is not None and report.n:
            rate = report.n_failed / report.n
            figures[f"{label.replace(' ', '_')}_failure_rate"] = rate
            allowed = policy.max_failure_rate
            checks.append((rate <= allowed, f"{label}: {report.n_failed}/{report.n} failed (maximum {allowed:.0%})"))

    if policy.max_drop_vs_production is not None:
        production_mean = production_report.mean_score if production_report else None
        figures["production_mean"] = production_mean
        if candidate_mean is None or production_mean is None:
            checks.append((False, "production not evaluated on the eval split: no comparison possible"))
        else:
            delta = candidate_mean - production_mean
            figures["delta_vs_production"] = delta
            checks.append((delta >= -policy.max_drop_vs_production,
                           f"mean {candidate_mean:.2f} vs production {production_mean:.2f} "
                           f"({delta:+.2f}; allowed drop {policy.max_drop_vs_production:.2f})"))

    if policy.min_pairwise_win_rate is not None:
        win_rate = pairwise.win_rate if pairwise else None
        figures["pairwise"] = pairwise.summary() if pairwise else None
        if pairwise is None or win_rate is None:
            checks.append((False, "no pairwise comparison with production"))
        else:
            checks.append((win_rate >= policy.min_pairwise_win_rate,
                           f"pairwise win rate {win_rate:.2f} ({pairwise.wins}W/{pairwise.ties}T/{pairwise.losses}L) "
                           f"vs minimum {policy.min_pairwise_win_rate:.2f}"))

    if policy.max_regression_drop_points is not None:
        cand_mean = regression_candidate.mean_score if regression_candidate else None
        base_mean = regression_base.mean_score if regression_base else None
        if cand_mean is None or base_mean is None:
            checks.append((False, "regression set not evaluated on both the candidate and the base model"))
        else:
            drop = score_to_points(base_mean) - score_to_points(cand_mean)
            figures.update(regression_candidate_points=score_to_points(cand_mean),
                           regression_base_points=score_to_points(base_mean), regression_drop_points=drop)
            checks.append((drop <= policy.max_regression_drop_points,
                           f"regression set: {score_to_points(cand_mean):.1f} points vs base "
                           f"{score_to_points(base_mean):.1f} (drop {drop:.1f}, maximum "
                           f"{policy.max_regression_drop_points:.1f})"))

    passed = all(ok for ok, _ in checks)
    reasons = [f"{'ok' if ok else 'FAIL'}: {text}" for ok, text in checks]
    return GateDecision(passed=passed, reasons=reasons, figures=figures, policy=policy.model_dump())
