"""The console's state changes: the same registry and canary calls the CLI makes, so the same rules refuse.

Each form names the version the page showed; the registry refuses when the alias has moved on since (another
canary, already promoted), so a stale page never changes what its user did not see.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import Engine

from deploy import canary, controls
from deploy.deployments import DeploymentError
from deploy.launcher import Launcher
from registry import store
from registry.errors import RegistryError

NOTICES = {
    "weight": "Canary weight changed.",
    "promoted": "Canary promoted to production; the old production server drains, then stops.",
    "rolled_back": "Canary rolled back; its server drains, then stops.",
    "paused": "Schedule paused: scheduled cycles are skipped until it is resumed (the canary watch goes on).",
    "resumed": "Schedule resumed.",
    "requested": "Cycle requested: the worker's leader starts it within its supervision interval.",
}


@dataclass(frozen=True)
class Outcome:
    refused: bool
    message: str
    notice: str = ""


def perform(engine: Engine, launcher: Launcher, form: Mapping[str, str], actor: str) -> Outcome:
    action = form.get("action", "")
    alias, version = form.get("alias", "").strip(), form.get("version", "").strip()
    reason = form.get("reason", "").strip() or f"{action} from the console"
    if not alias:
        return Outcome(True, "alias: missing")
    try:
        if action == "pause":
            controls.pause(engine, alias, actor, form.get("reason", "").strip() or "paused from the console")
            return Outcome(False, f"schedule of {alias} paused", "paused")
        if action == "resume":
            controls.resume(engine, alias, actor)
            return Outcome(False, f"schedule of {alias} resumed", "resumed")
        if action == "run_now":
            controls.request_run(engine, alias, actor)
            return Outcome(False, f"cycle of {alias} requested", "requested")
        if action in ("weight", "promote", "rollback") and not version:
            return Outcome(True, "version: missing (the canary the page showed)")
        if action == "weight":
            weight = _weight(form.get("weight", ""))
            store.set_canary_weight(engine, version, weight, actor, reason)
            return Outcome(False, f"{version} now at {weight}%", "weight")
        if action == "promote":
            canary.promote_canary(engine, alias, launcher=launcher, actor=actor, reason=reason, version_id=version)
            return Outcome(False, f"promoted {version}", "promoted")
        if action == "rollback":
            canary.rollback_canary(engine, alias, launcher=launcher, actor=actor, reason=reason, version_id=version)
            return Outcome(False, f"rolled back {version}", "rolled_back")
    except (RegistryError, DeploymentError, ValueError) as exc:
        return Outcome(True, str(exc))
    return Outcome(True, f"action: {action!r} is not one of weight, promote, rollback, pause, resume, run_now")


def _weight(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"weight: {raw!r} is not a whole number from 0 to 100") from None
