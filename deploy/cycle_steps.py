"""The concrete improvement cycle: curate -> train -> merge -> register -> serve -> gate -> canary.

Every step is a plain function of the shared context; each records its figures on the run. The candidate is
registered (files complete and read-only) before it is served, because its version id is its served name;
the gate then decides, and only a passing version starts a canary. A cycle that dies is cleaned up by the
next start (`cleanup_run`): its server is stopped and an ungated candidate is rejected.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from core.chat_format import EVAL_FILE, VIEW_FILES
from core.policies import GatePolicy
from core.settings import Settings
from deploy.canary import start as start_canary
from deploy.cycle import CycleContext, SkipCycle, Step
from deploy.cycle_runs import CycleRunPublic
from deploy.deployments import DeploymentError
from deploy.launcher import Launcher
from feedback.curate import ALL_HISTORY, curate
from feedback.datasets import get_dataset
from feedback.policy import CurationPolicy
from registry import store
from registry.errors import UnknownVersion
from registry.evaluate import EvalExample, examples_from_records, load_examples
from registry.gating import Endpoint, gate_version
from registry.judges import Judge
from registry.models import ModelVersionCreate, VersionStatus

log = logging.getLogger("tuneloop.cycle")


@dataclass
class CyclePolicy:
    """What one improvement cycle of an alias does, and when it stops early."""

    alias: str
    min_new_examples: int = 20  # fewer new training examples than this: skip (recorded)
    canary_weight: int = 20  # percent of the alias's traffic the new version gets first
    train_overrides: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields
    curation: dict[str, Any] = field(default_factory=dict)  # CurationPolicy fields
    gate: GatePolicy = field(default_factory=GatePolicy)
    golden_examples: list[dict[str, Any]] = field(default_factory=list)  # trusted chat examples, always gated
    eval_limit: int = 64  # eval-split examples judged per version
    merge: bool = True  # also write a merged checkpoint (adapter-only serving needs none)

    def __post_init__(self) -> None:
        if not self.alias:
            raise ValueError("alias: required")
        if self.min_new_examples < 1:
            raise ValueError("min_new_examples: must be >= 1")
        if isinstance(self.canary_weight, bool) or not 1 <= self.canary_weight <= 100:
            raise ValueError("canary_weight: must be an integer percent from 1 to 100")
        if self.eval_limit < 1:
            raise ValueError("eval_limit: must be >= 1")
        CurationPolicy(**self.curation)


def build_steps(settings: Settings, launcher: Launcher, policy: CyclePolicy, judge: Judge) -> list[Step]:
    """The cycle's steps bound to the settings, the launcher and the policy."""
    engine = launcher.engine

    def curate_step(ctx: CycleContext) -> dict[str, Any]:
        # The window starts where the last dataset a version was trained on ended, not where the last dataset
        # ended: a cycle that died or failed after curating (a killed worker, a training run out of memory)
        # trained nothing, and its examples must reach the next cycle rather than be skipped as already seen.
        trained = _trained_datasets(engine, policy.alias)
        previous = trained[-1] if trained else None
        since = previous.window_end if previous is not None and previous.window_end is not None else ALL_HISTORY
        result = curate(engine, settings, CurationPolicy(**policy.curation), policy.alias, since=since,
                        earlier=trained)
        if result.dataset_id is None:
            raise SkipCycle("no new examples since the last dataset a version was trained on")
        dataset = get_dataset(engine, result.dataset_id)
        if previous is not None and previous.sha256 == dataset.sha256:
            raise SkipCycle(f"dataset unchanged ({dataset.id})")
        method, why = _method_for(dataset, policy)
        n_train = dataset.view_sizes(method)["train"]
        if n_train < policy.min_new_examples:
            raise SkipCycle(f"only {n_train} new {method} training rows (minimum {policy.min_new_examples})")
        ctx.remember(dataset_id=dataset.id, dataset_path=dataset.path)
        return {"counts": result.counts, "dataset_id": dataset.id, "n_train": dataset.n_train, "n_eval": dataset.n_eval,
                "method": method, "method_reason": why, "views": _view_sizes(dataset)}

    def train_step(ctx: CycleContext) -> dict[str, Any]:
        from trainer.config import from_mapping
        from trainer.launch import train_in_subprocess

        production = _production(engine, policy.alias)
        base = production.merged_path or production.base_model
        config = from_mapping({"base_model": base, "output_dir": str(settings.home / "runs"),
                               **policy.train_overrides})
        # A process of its own: the worker's memory is not the run's, and a hung run is stopped at the limit
        # (TrainingProcessError fails the step with the log's last lines).
        result = train_in_subprocess(config, ctx.values["dataset_path"], timeout_s=settings.cycle.train_timeout_s,
                                     log_path=settings.home / "logs" / f"train-{ctx.run_id}.log")
        ctx.remember(run_dir=str(result.run_dir), adapter_dir=str(result.adapter_dir), parent_id=production.id)
        return {"run_id": result.run_id, "final_train_loss": result.final_train_loss,
                "final_eval_loss": result.final_eval_loss,
                "tokens_per_second": result.metadata.get("throughput", {}).get("tokens_per_second"),
                "wall_seconds": result.metadata.get("wall_seconds")}

    def merge_step(ctx: CycleContext) -> dict[str, Any]:
        if not policy.merge:
            return {"merged": False}
        from trainer.launch import merge_in_subprocess

        out = settings.home / "models" / f"{policy.alias}-{Path(ctx.values['run_dir']).name}-merged"
        if not out.exists():
            merge_in_subprocess(ctx.values["run_dir"], out, timeout_s=settings.cycle.merge_timeout_s,
                                log_path=settings.home / "logs" / f"merge-{ctx.run_id}.log")
        ctx.remember(merged_path=str(out))
        return {"merged_path": str(out)}

    def register_step(ctx: CycleContext) -> dict[str, Any]:
        import json

        metadata = json.loads((Path(ctx.values["run_dir"]) / "run.json").read_text())
        dataset = get_dataset(engine, ctx.values["dataset_id"])
        version = store.register_candidate(engine, ModelVersionCreate(
            alias=policy.alias, base_model=metadata["base_model"]["path"], parent_id=ctx.values["parent_id"],
            adapter_path=ctx.values["adapter_dir"], merged_path=ctx.values.get("merged_path"),
            dataset_version_id=dataset.id, dataset_hash=dataset.sha256,
            training_config={**metadata["config"], "resolved": metadata.get("resolved", {}),
                             "method_plan": metadata.get("method", {}), "dataset_views": _view_sizes(dataset)},
            library_versions=metadata.get("libraries", {}), code_revision=metadata.get("code"),
            training_metrics=_training_metrics(metadata),
        ), actor=f"cycle:{ctx.run_id}")
        ctx.remember(version_id=version.id)
        return {"version_id": version.id}

    def serve_step(ctx: CycleContext) -> dict[str, Any]:
        deployment = launcher.ensure(ctx.values["version_id"])
        return {"mode": str(deployment.mode), "base_url": deployment.base_url}

    def gate_step(ctx: CycleContext) -> dict[str, Any]:
        version_id = ctx.values["version_id"]
        production = _production(engine, policy.alias)
        base = _first_version(engine, policy.alias)
        endpoints = {vid: _endpoint(launcher, vid) for vid in {version_id, production.id, base.id}}
        dataset = get_dataset(engine, ctx.values["dataset_id"])
        examples = load_examples(Path(dataset.path) / EVAL_FILE, limit=policy.eval_limit)
        run = asyncio.run(gate_version(
            engine, version_id, endpoints[version_id], endpoints[production.id], endpoints[base.id], examples,
            judge, settings.home / "evals", policy.gate, actor=f"cycle:{ctx.run_id}",
            golden=golden(policy),
        ))
        figures = {"passed": run.decision.passed, "reasons": list(run.decision.reasons),
                   "figures": run.decision.figures, "policy": run.decision.policy}
        if not run.decision.passed:
            launcher.stop(version_id, "gate rejected")
            ctx.remember(gate="rejected")
            raise SkipCycle("gate rejected the candidate: " + "; ".join(run.decision.reasons), figures)
        ctx.remember(gate="passed")
        return figures

    def canary_step(ctx: CycleContext) -> dict[str, Any]:
        version = start_canary(engine, ctx.values["version_id"], policy.canary_weight, launcher=launcher,
                               actor=f"cycle:{ctx.run_id}", reason=f"cycle {ctx.run_id}: gate passed")
        return {"canary": version.id, "weight": policy.canary_weight}

    return [Step("curate", curate_step), Step("train", train_step), Step("merge", merge_step),
            Step("register", register_step), Step("serve", serve_step), Step("gate", gate_step),
            Step("canary", canary_step)]


def golden(policy: CyclePolicy) -> list[EvalExample]:
    """The policy's trusted examples, with ids of their own (the gate scores them apart from the eval split)."""
    records = [{**record, "id": record.get("id") or f"golden-{i}"}
               for i, record in enumerate(policy.golden_examples, start=1)]
    return examples_from_records(records)


def cleanup_run(launcher: Launcher) -> Any:
    """Undo what a failed or dead cycle left: its candidate's server, and the candidate if never gated."""

    def cleanup(engine: Engine, run: CycleRunPublic) -> None:
        if not run.version_id:  # died before registering: nothing outside its temp dirs to undo
            return
        version_id = run.version_id
        try:
            version = store.get_version(engine, version_id)
        except UnknownVersion:
            return
        if version.status == VersionStatus.candidate:
            try:
                launcher.stop(version_id, f"cycle run {run.id} did not finish")
            except DeploymentError as exc:  # on another machine: stopped there; the candidate is rejected anyway
                log.warning("cleanup of cycle run %s: %s", run.id, exc)
            launcher.stop_strays(version_id)  # a server its dead worker was still starting
            if version.gate_passed is None:
                store.reject(engine, version_id, "cycle", f"cycle run {run.id} died before its gate")

    return cleanup


def _method_for(dataset: Any, policy: CyclePolicy) -> tuple[str, str]:
    """The method the train step will use on this dataset (the trainer's own rule), or a recorded skip."""
    from trainer.config import ConfigError
    from trainer.methods import ViewSizes, choose_method

    try:
        return choose_method(str(policy.train_overrides.get("method", "auto")),
                             ViewSizes.from_counts(dataset.counts, dataset.n_train))
    except ConfigError as exc:
        raise SkipCycle(str(exc)) from None


def _trained_datasets(engine: Engine, alias: str) -> list[Any]:
    """The datasets that versions of `alias` were trained on and that a gate judged (passed or not), by the end
    of their window. A candidate rejected because its cycle died before the gate does not count: its data is
    taken again."""
    ids = [v.dataset_version_id for v in store.list_versions(engine, alias)
           if v.dataset_version_id and not (v.status == VersionStatus.rejected and v.gate_passed is None)]
    found = [get_dataset(engine, dataset_id) for dataset_id in dict.fromkeys(ids)]
    return sorted((d for d in found if d is not None), key=lambda d: (d.window_end is not None, d.window_end))


def _view_sizes(dataset: Any) -> dict[str, dict[str, int]]:
    return {view: dataset.view_sizes(view) for view in VIEW_FILES}


def _production(engine: Engine, alias: str) -> Any:
    production_id, _canary, _weight = store.get_aliases(engine, alias)
    if production_id is None:
        raise SkipCycle(f"alias {alias!r} has no production version; register its base model first")
    return store.get_version(engine, production_id)


def _first_version(engine: Engine, alias: str) -> Any:
    return min(store.list_versions(engine, alias), key=lambda v: v.number)


def _endpoint(launcher: Launcher, version_id: str) -> Endpoint:
    deployment = launcher.ensure(version_id)
    return Endpoint(deployment.base_url, deployment.served_name)


def _training_metrics(metadata: dict[str, Any]) -> dict[str, Any]:
    keys = ("final_train_loss", "final_eval_loss", "mean_train_loss", "throughput", "wall_seconds", "loss_curve",
            "epochs_completed", "global_step", "trainable_parameters", "device")
    return {k: metadata[k] for k in keys if k in metadata}
