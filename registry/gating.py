"""Run the gate for a candidate: evaluate the endpoints, compare, decide, and store the outcome on the version.

Used by `tuneloop eval VERSION` and by the nightly cycle. The evaluations are I/O against the serving
endpoints and the judge; the decision itself is `registry.gate.decide`, a pure function.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from core.policies import GatePolicy
from registry.evaluate import EvalExample, compare_reports, evaluate_endpoint, regression_examples
from registry.gate import GateDecision, decide
from registry.judges import Judge
from registry.reports import EvalReport, PairwiseReport
from registry.store import record_gate


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible server (base URL, without /v1) and the served model name to ask."""

    base_url: str
    model: str
    api_key: str = field(default="EMPTY", repr=False)

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url: {self.base_url!r} is not an http(s) URL")
        if not self.model:
            raise ValueError("model: the served model name is required")


@dataclass
class GateRun:
    decision: GateDecision
    reports: dict[str, EvalReport]  # candidate_eval, production_eval, candidate_regression, base_regression
    pairwise: PairwiseReport | None


async def run_gate(
    candidate: Endpoint,
    production: Endpoint,
    base: Endpoint,
    eval_examples: list[EvalExample],
    judge: Judge,
    policy: GatePolicy | None = None,
    regression: list[EvalExample] | None = None,
    concurrency: int = 8,
    max_tokens: int = 256,
    golden: list[EvalExample] | None = None,
) -> GateRun:
    """Evaluate candidate and production on the eval split (plus the golden set), candidate and base on the
    regression set, judge candidate vs production pairwise, and decide. The golden set is also scored on its
    own: the eval split comes from users' corrections and may be wrong, the golden set is trusted."""
    regression = regression_examples() if regression is None else regression
    golden = golden or []
    eval_examples = golden + eval_examples

    def evaluate(endpoint: Endpoint, examples: list[EvalExample], name: str):
        return evaluate_endpoint(endpoint.base_url, endpoint.model, examples, judge, concurrency, name=name,
                                 api_key=endpoint.api_key, max_tokens=max_tokens)

    candidate_eval, production_eval, candidate_regression, base_regression = await asyncio.gather(
        evaluate(candidate, eval_examples, "eval"), evaluate(production, eval_examples, "eval"),
        evaluate(candidate, regression, "regression"), evaluate(base, regression, "regression"),
    )
    pairwise = await compare_reports(candidate_eval, production_eval, judge, concurrency) if eval_examples else None
    golden_ids = {example.id for example in golden}
    candidate_golden = candidate_eval.subset(golden_ids, name="golden") if golden else None
    decision = decide(candidate_eval, production_eval, pairwise, candidate_regression, base_regression, policy,
                      golden=candidate_golden)
    reports = {"candidate_eval": candidate_eval, "production_eval": production_eval,
               "candidate_regression": candidate_regression, "base_regression": base_regression}
    if candidate_golden is not None:
        reports["candidate_golden"] = candidate_golden
    return GateRun(decision, reports, pairwise)


async def gate_version(
    engine: Engine,
    version_id: str,
    candidate: Endpoint,
    production: Endpoint,
    base: Endpoint,
    eval_examples: list[EvalExample],
    judge: Judge,
    reports_dir: Path,
    policy: GatePolicy | None = None,
    actor: str = "gate",
    **options: Any,
) -> GateRun:
    """run_gate, then write the full reports to reports_dir/<version>/ and store decision + summaries."""
    run = await run_gate(candidate, production, base, eval_examples, judge, policy, **options)
    out = reports_dir / version_id
    out.mkdir(parents=True, exist_ok=True)
    summaries: dict[str, Any] = {}
    for name, report in run.reports.items():
        path = out / f"{name}.json"
        path.write_text(report.model_dump_json(indent=2))
        summaries[name] = {**report.summary(), "path": str(path.resolve())}
    if run.pairwise is not None:
        path = out / "pairwise.json"
        path.write_text(run.pairwise.model_dump_json(indent=2))
        summaries["pairwise"] = {**run.pairwise.summary(), "path": str(path.resolve())}
    (out / "gate.json").write_text(json.dumps(run.decision.to_dict(), indent=2, default=str))
    record_gate(engine, version_id, run.decision, reports=summaries, actor=actor)
    return run
