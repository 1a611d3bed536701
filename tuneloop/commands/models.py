"""`tuneloop models list|show|promote|rollback|archive|register-base|audit` and `tuneloop eval VERSION`."""

from __future__ import annotations

import asyncio
import getpass
import json
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine

from core.policies import GatePolicy
from core.settings import Settings, load_settings
from registry import store
from registry.models import AuditEntryPublic, ModelVersionPublic, VersionStatus
from tuneloop.compose import open_store

models_app = typer.Typer(help="Model versions, their lineage, and the production/canary aliases.",
                         no_args_is_help=True)
console = Console()
STATUS_STYLE = {"production": "bold green", "canary": "yellow", "candidate": "cyan", "rejected": "red",
                "archived": "dim"}


def _engine() -> tuple[Settings, Engine]:
    settings = load_settings()
    return settings, open_store(settings)


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]{message}[/]")
    return typer.Exit(1)


def _actor(actor: str | None) -> str:
    return actor or getpass.getuser()


def _mean(version: ModelVersionPublic, name: str) -> str:
    mean = (version.eval_reports.get(name) or {}).get("mean_score")
    return f"{mean:.2f}" if isinstance(mean, int | float) else "-"


@models_app.command("list")
def list_command(alias: str = typer.Option(None, help="Only this model alias.")) -> None:
    """Versions with status, lineage and gate outcome."""
    _, engine = _engine()
    pointers = {state.alias: state for state in store.list_aliases(engine)}
    table = Table("version", "status", "serving", "parent", "dataset", "gate", "eval mean", "created")
    for version in store.list_versions(engine, alias):
        state = pointers.get(version.alias)
        serving = ""
        if state and state.production_id == version.id:
            serving = f"{100 - state.canary_weight}%"
        elif state and state.canary_id == version.id:
            serving = f"{state.canary_weight}%"
        gate = {True: "[green]passed[/]", False: "[red]failed[/]", None: "-"}[version.gate_passed]
        status = f"[{STATUS_STYLE.get(version.status, '')}]{version.status}[/]"
        table.add_row(version.id, status, serving, version.parent_id or "-", version.dataset_version_id or "-",
                      gate, _mean(version, "candidate_eval"), str(version.created_at)[:19])
    console.print(table)


@models_app.command("show")
def show_command(version_id: str) -> None:
    """Everything recorded about one version: lineage, training, evals, gate reasons, audit trail."""
    _, engine = _engine()
    try:
        version = store.get_version(engine, version_id)
    except store.RegistryError as exc:
        raise _fail(str(exc)) from None
    table = Table("field", "value", show_header=False)
    for name in ("id", "alias", "status", "base_model", "parent_id", "adapter_path", "merged_path",
                 "dataset_version_id", "dataset_hash", "code_revision", "created_at", "gated_at", "canary_at",
                 "production_at", "retired_at"):
        table.add_row(name, str(getattr(version, name) or "-"))
    for name in ("training_config", "library_versions", "training_metrics"):
        table.add_row(name, json.dumps(getattr(version, name), indent=1, default=str))
    table.add_row("files", f"{len(version.files_manifest)} registered")
    console.print(table)
    if version.eval_reports:
        reports = Table("report", "n", "failed", "mean score", "points", "judge")
        for name, summary in version.eval_reports.items():
            mean, points = summary.get("mean_score"), summary.get("points")
            if name == "pairwise":
                win_rate = summary.get("win_rate")
                mean = f"win rate {win_rate:.2f}" if win_rate is not None else "-"
            else:
                mean = f"{mean:.2f}" if mean is not None else "-"
            reports.add_row(name, str(summary.get("n", "-")), str(summary.get("n_failed", "-")), mean,
                            f"{points:.1f}" if isinstance(points, int | float) else "-", str(summary.get("judge")))
        console.print(reports)
    if version.gate:
        verdict = "[green]PASSED[/]" if version.gate_passed else "[red]FAILED[/]"
        console.print(f"gate {verdict}")
        for reason in version.gate.get("reasons", []):
            console.print(f"  {reason}")
    _print_audit([e for e in store.audit_log(engine, version.alias) if e.version_id == version.id])


def _transition(action: str, target: str, *args: Any) -> None:
    _, engine = _engine()
    try:
        version = getattr(store, action)(engine, target, *args)
    except (store.RegistryError, ValueError) as exc:
        raise _fail(str(exc)) from None
    production, canary, weight = store.get_aliases(engine, version.alias)
    console.print(f"{version.id} is now [{STATUS_STYLE.get(version.status, '')}]{version.status}[/]; "
                  f"{version.alias}: production {production}, canary {canary or '-'} ({weight}%)")


@models_app.command("promote")
def promote_command(version_id: str, reason: str = typer.Option(..., help="Why (goes to the audit log)."),
                    actor: str = typer.Option(None, help="Who; default: the current user.")) -> None:
    """Canary -> production (the previous production version is archived)."""
    _transition("promote", version_id, _actor(actor), reason)


@models_app.command("rollback")
def rollback_command(target: str = typer.Argument(..., help="A model alias or a version id."),
                     reason: str = typer.Option(..., help="Why (goes to the audit log)."),
                     actor: str = typer.Option(None, help="Who; default: the current user.")) -> None:
    """Stop the running canary, or (with none running) put the previous production version back."""
    _transition("rollback", target, _actor(actor), reason)


@models_app.command("archive")
def archive_command(version_id: str, reason: str = typer.Option(..., help="Why (goes to the audit log)."),
                    actor: str = typer.Option(None, help="Who; default: the current user.")) -> None:
    """Retire a candidate or rejected version."""
    _transition("archive", version_id, _actor(actor), reason)


@models_app.command("register-base")
def register_base_command(
    alias: str, path: str = typer.Argument(None, help="Default: the configured base model.")
) -> None:
    """Register the base model as the alias's first production version (idempotent)."""
    settings, engine = _engine()
    try:
        version = store.register_base(engine, alias, path or settings.resolved_base_model, actor=_actor(None))
    except (store.RegistryError, ValueError) as exc:
        raise _fail(str(exc)) from None
    console.print(f"{version.id}: {version.base_model} ({version.status})")


@models_app.command("audit")
def audit_command(alias: str = typer.Argument(None), limit: int = typer.Option(50, min=1)) -> None:
    """The audit log of transitions (newest last)."""
    _, engine = _engine()
    _print_audit(store.audit_log(engine, alias, limit=limit))


def _print_audit(entries: list[AuditEntryPublic]) -> None:
    table = Table("when", "alias", "action", "version", "from", "to", "who", "why")
    for entry in entries:
        table.add_row(str(entry.created_at)[:19], entry.alias, entry.action, entry.version_id or "-",
                      entry.from_status or "-", entry.to_status or "-", entry.actor, entry.reason)
    console.print(table)


def _endpoint_url(settings: Settings, served_name: str, explicit: str | None, fallback: str | None) -> str:
    if explicit:
        return explicit
    if served_name in settings.upstreams:
        return settings.upstreams[served_name][0]
    if fallback:
        return fallback
    raise _fail(f"no endpoint for {served_name}: pass its URL or add it to the upstreams setting")


def eval_command(
    version_id: str = typer.Argument(..., help="The candidate version to gate."),
    url: str = typer.Option(None, help="Candidate endpoint (default: upstreams[VERSION]); also the default for "
                                       "the others, for one server serving every version."),
    model: str = typer.Option(None, help="Candidate served model name (default: VERSION)."),
    production_url: str = typer.Option(None, help="Production endpoint (default: upstreams or --url)."),
    production_model: str = typer.Option(None, help="Production served name (default: its version id)."),
    base_url: str = typer.Option(None, help="Base model endpoint for the regression set."),
    base_model: str = typer.Option(None, help="Base served name (default: the alias's first version id)."),
    eval_set: Path = typer.Option(None, help="JSONL eval split (default: the version's dataset eval split)."),
    limit: int = typer.Option(None, min=1, help="Evaluate at most this many examples per set."),
    concurrency: int = typer.Option(8, min=1),
    max_tokens: int = typer.Option(256, min=1),
    gate: list[str] = typer.Option(
        None, "--gate", help="Override a gate threshold, field=value (repeatable; 'none' turns a check off); "
                             "the rest come from the settings' cycle.gate (TUNELOOP_CYCLE__GATE__*)."),
) -> None:
    """Run the gate for VERSION by hand: evaluate, compare with production and the base, decide, record."""
    from registry.evaluate import load_examples, regression_examples
    from registry.gating import Endpoint, gate_version
    from tuneloop.compose import judge as configured_judge

    settings, engine = _engine()
    try:
        version = store.get_version(engine, version_id)
        if version.status not in (VersionStatus.candidate, VersionStatus.rejected):
            raise store.InvalidTransition(f"{version_id} is {version.status}; only candidates are gated")
        production_id, _, _ = store.get_aliases(engine, version.alias)
        base_id = store.version_id_for(version.alias, 1)
        policy = _gate_policy(settings.cycle.gate, gate or [])
        examples = load_examples(eval_set or _dataset_eval_path(engine, version), limit)
        candidate = Endpoint(_endpoint_url(settings, version_id, url, None), model or version_id)
        production_name = production_model or production_id or base_id
        production = Endpoint(_endpoint_url(settings, production_name, production_url, url), production_name)
        base_name = base_model or base_id
        base = Endpoint(_endpoint_url(settings, base_name, base_url, production.base_url), base_name)
        judge = configured_judge(settings)
    except (store.RegistryError, ValueError, OSError) as exc:
        raise _fail(str(exc)) from None
    console.print(f"gating {version_id} with judge [bold]{judge.name}[/] on {len(examples)} eval examples")
    run = asyncio.run(gate_version(
        engine, version_id, candidate, production, base, examples, judge, settings.home / "evals", policy,
        actor=_actor(None), regression=regression_examples(limit), concurrency=concurrency, max_tokens=max_tokens,
    ))
    for reason in run.decision.reasons:
        console.print(("[green]" if reason.startswith("ok") else "[red]") + reason + "[/]")
    if not run.decision.passed:
        console.print(f"[red]{version_id} FAILED the gate[/] (status: rejected)")
        raise typer.Exit(1)
    console.print(f"[green]{version_id} passed the gate[/]: it may start a canary")


def _gate_policy(configured: GatePolicy, overrides: list[str]) -> GatePolicy:
    """The settings' gate with `field=value` overrides, validated as a whole (errors name the field)."""
    changes: dict[str, object] = {}
    for item in overrides:
        name, sep, value = item.partition("=")
        if not sep or name.strip() not in GatePolicy.model_fields:
            raise ValueError(f"--gate {item!r}: expected field=value with a field of "
                             f"{', '.join(GatePolicy.model_fields)}")
        changes[name.strip()] = None if value.strip().lower() in ("none", "null", "off") else value.strip()
    try:
        return GatePolicy.model_validate({**configured.model_dump(), **changes})
    except ValidationError as exc:
        raise ValueError("--gate: " + "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                                 for e in exc.errors())) from None


def _dataset_eval_path(engine: Engine, version: ModelVersionPublic) -> Path:
    from feedback.datasets import get_dataset

    if not version.dataset_version_id:
        raise ValueError(f"{version.id} records no dataset version; pass --eval-set")
    dataset = get_dataset(engine, version.dataset_version_id)
    if dataset is None:
        raise ValueError(f"dataset {version.dataset_version_id} is not in the store; pass --eval-set")
    return dataset.eval_path
