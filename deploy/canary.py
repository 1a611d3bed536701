"""The canary controller: start a canary, and apply one analysis decision per `step` (promote, advance a stage,
roll back, or wait), moving the registry pointers and draining the servers that leave traffic.

The registry (registry.store) owns the pointers and the audit log; the launcher (deploy.launcher) owns the
servers. `launcher=None` changes only the registry (servers are then someone else's business).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from core.clock import utcnow
from core.db import unit_of_work
from core.deployments_table import DeploymentStatus
from core.policies import CanaryPolicy
from deploy.analysis import Action, Analysis, ArmFigures, analyse
from deploy.deployments import DeploymentError, active_deployment, active_deployments
from deploy.figures import arm_figures
from deploy.launcher import Launcher
from registry import store
from registry.errors import (
    GateNotPassed,
    InvalidTransition,
    InvalidWeight,
    NoProductionVersion,
    UnknownAlias,
)
from registry.models import ModelVersionPublic, VersionStatus
from registry.queries import AliasState

CONTROLLER = "canary-controller"


@dataclass(frozen=True)
class StepResult:
    """What one controller step saw and did."""

    alias: str
    action: Action
    reasons: tuple[str, ...]
    canary_id: str | None = None
    production_id: str | None = None
    weight: int = 0  # the canary weight after the step
    analysis: Analysis | None = None
    figures: dict[str, ArmFigures] = field(default_factory=dict)
    stopped: tuple[str, ...] = ()  # deployments stopped after draining

    def to_dict(self) -> dict[str, Any]:
        return {"alias": self.alias, "action": str(self.action), "reasons": list(self.reasons),
                "canary_id": self.canary_id, "production_id": self.production_id, "weight": self.weight,
                "analysis": self.analysis.to_dict() if self.analysis else None,
                "figures": {k: v.to_dict() for k, v in self.figures.items()}, "stopped": list(self.stopped)}


Decision = StepResult  # the name the nightly cycle's design uses


def check_can_start(engine: Engine, version_id: str, weight: object) -> ModelVersionPublic:
    """The registry's refusals, checked before any server is started (start_canary re-checks them atomically)."""
    if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
        raise InvalidWeight(f"weight {weight!r}: must be an integer percent from 0 to 100")
    version = store.get_version(engine, version_id)
    if version.status != VersionStatus.candidate:
        raise InvalidTransition(f"{version_id} is {version.status}; only a candidate that passed the gate can "
                                "start a canary")
    if not version.gate_passed:
        raise GateNotPassed(f"{version_id} has not passed the gate; run `tuneloop eval {version_id}` first")
    production, canary, _weight = store.get_aliases(engine, version.alias)
    if production is None:
        raise NoProductionVersion(f"alias {version.alias!r} has no production version to compare against")
    if canary is not None:
        raise InvalidTransition(f"alias {version.alias!r} already has canary {canary}; promote or roll it back first")
    return version


def start(engine: Engine, version_id: str, weight: int, *, launcher: Launcher | None = None,
          actor: str = CONTROLLER, reason: str = "canary started") -> ModelVersionPublic:
    """Serve the version (and its production) and send `weight` percent of the alias's traffic to it.

    Refusals (gate not passed, no production, weight outside 0-100) come before any server starts; the
    pointer moves only after the canary's server is healthy, so no request is routed to a server that isn't up.
    """
    version = check_can_start(engine, version_id, weight)
    if launcher is not None:
        production_id = store.get_aliases(engine, version.alias)[0]
        assert production_id is not None
        launcher.ensure(production_id)
        launcher.ensure(version_id)
    try:
        return store.start_canary(engine, version_id, weight, actor, reason)
    except Exception:
        if launcher is not None:  # refused after all (a concurrent change): don't leave its server behind
            launcher.stop(version_id, "canary start refused")
        raise


def stage_started_at(engine: Engine, state: AliasState) -> datetime:
    """When the canary's current weight took effect: the analysis window of this stage starts there."""
    for entry in reversed(store.audit_log(engine, state.alias)):
        if entry.version_id == state.canary_id and entry.action in ("start_canary", "set_canary_weight"):
            return entry.created_at
    canary = store.get_version(engine, state.canary_id or "")
    assert canary.canary_at is not None
    return canary.canary_at


def evaluate(engine: Engine, alias: str, policy: CanaryPolicy, *, now: datetime | None = None
             ) -> tuple[AliasState, dict[str, ArmFigures], Analysis | None]:
    """The current stage's figures and the analysis, without acting on it (`tuneloop canary status`).

    A stage whose canary arm has served nothing says so ("no canary traffic", how long the stage has run and
    at what weight) as its first reason; `now` is the clock for that (tests).
    """
    state = store.get_alias_state(engine, alias)
    if state is None:
        raise UnknownAlias(f"no model alias {alias!r}")
    if state.canary_id is None or state.production_id is None:
        return state, {}, None
    versions = [state.production_id, state.canary_id]
    started = stage_started_at(engine, state)
    figures = arm_figures(engine, alias, versions, started)
    running_s = ((now or utcnow()) - started).total_seconds()
    return state, figures, analyse(figures[state.production_id], figures[state.canary_id], policy,
                                   canary_weight=state.canary_weight, stage_running_s=running_s)


def step(engine: Engine, alias: str, policy: CanaryPolicy, *, launcher: Launcher | None = None,
         actor: str = CONTROLLER) -> StepResult:
    """Apply one decision for the alias's canary; the nightly cycle calls this on a schedule."""
    stopped = _reap(launcher)
    state = store.get_alias_state(engine, alias)
    if state is None:
        raise UnknownAlias(f"no model alias {alias!r}")
    if state.canary_id is None:
        return StepResult(alias, Action.wait, ("no canary running",), None, state.production_id, 0,
                          stopped=stopped)
    if launcher is not None:
        broken = _canary_not_serving(engine, launcher, state.canary_id)
        if broken:
            rollback_canary(engine, alias, launcher=launcher, actor=actor, reason=f"automatic: {broken}",
                            version_id=state.canary_id)
            return StepResult(alias, Action.rollback, (broken,), state.canary_id, state.production_id, 0,
                              stopped=stopped + _reap(launcher))
    state, figures, analysis = evaluate(engine, alias, policy)
    assert analysis is not None and state.canary_id is not None
    reasons = analysis.reasons
    action, weight = analysis.action, state.canary_weight
    if action == Action.rollback:
        rollback_canary(engine, alias, launcher=launcher, actor=actor, reason="automatic: " + "; ".join(reasons),
                        version_id=state.canary_id)
        weight = 0
    elif action == Action.promote:
        next_stage = next((s for s in policy.stages if s > state.canary_weight), None)
        if next_stage is not None:
            store.set_canary_weight(engine, state.canary_id, next_stage, actor,
                                    f"stage {state.canary_weight}% -> {next_stage}% passed: " + "; ".join(reasons))
            action, weight = Action.advance, next_stage
        else:
            promote_canary(engine, alias, launcher=launcher, actor=actor, reason="automatic: " + "; ".join(reasons),
                           version_id=state.canary_id)
            weight = 0
    return StepResult(alias, action, reasons, state.canary_id, state.production_id, weight, analysis, figures,
                      stopped + _reap(launcher))


def promote_canary(engine: Engine, alias: str, *, launcher: Launcher | None = None, actor: str = CONTROLLER,
                   reason: str = "promoted", version_id: str | None = None) -> ModelVersionPublic:
    """Canary -> production; the old production is archived and its server drains, then stops.

    `version_id`: the canary the caller analysed; the registry refuses if another one runs by now.
    """
    with unit_of_work(engine) as session:  # the pointers and the old server's drain: both or neither
        state = store.lock_alias(session, alias)
        canary_id = version_id or state.canary_id
        if canary_id is None:
            raise InvalidTransition(f"alias {alias!r} has no canary to promote")
        promoted = store.promote(session, canary_id, actor, reason)
        if launcher is not None and state.production_id is not None:
            launcher.drain(state.production_id, f"replaced by {canary_id}", db=session)
    return promoted


def rollback_canary(engine: Engine, alias: str, *, launcher: Launcher | None = None, actor: str = CONTROLLER,
                    reason: str = "rolled back", version_id: str | None = None) -> ModelVersionPublic:
    """Weight 0 and the canary marked rejected with the reasons (registry audit log); its server drains."""
    with unit_of_work(engine) as session:  # the pointers and the canary server's drain: both or neither
        canary_id = version_id or store.lock_alias(session, alias).canary_id
        if canary_id is None:
            raise InvalidTransition(f"alias {alias!r} has no canary to roll back")
        rejected = store.rollback(session, canary_id, actor, reason)
        if launcher is not None:
            launcher.drain(canary_id, f"rolled back: {reason}"[:2000], db=session)
    return rejected


def wait_drained(launcher: Launcher, timeout_s: float, poll_s: float = 1.0) -> list[str]:
    """Reap until nothing drains any more (or the timeout); returns the served names stopped."""
    deadline = time.monotonic() + timeout_s
    stopped: list[str] = []
    while True:
        stopped += _reap(launcher)
        draining = [d for d in active_deployments(launcher.engine) if d.status == DeploymentStatus.draining]
        if not draining or time.monotonic() >= deadline:
            return stopped
        time.sleep(poll_s)


def _reap(launcher: Launcher | None) -> tuple[str, ...]:
    return tuple(d.served_name for d in launcher.reap()) if launcher is not None else ()


def _canary_not_serving(engine: Engine, launcher: Launcher, canary_id: str) -> str | None:
    """None when the canary serves (restarting it once if its server was lost), else why not."""
    deployment = active_deployment(engine, canary_id)
    if deployment is not None and launcher.is_serving(deployment):
        return None
    try:
        launcher.ensure(canary_id)
    except DeploymentError as exc:
        return f"the canary's server is not running and could not be restarted: {exc}"
    return None
