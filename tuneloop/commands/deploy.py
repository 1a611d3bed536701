"""`tuneloop canary start|status|step|weight|promote|rollback` and `tuneloop deploy list|start|stop|check`.

Imports of the heavier modules happen inside the commands so `tuneloop --help` stays fast. Refusals (a
version that has not passed the gate, an alias without production, a weight outside 0-100, a bad policy
file) print one line saying why and exit 1 (2 for bad options); nothing is changed then.
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

canary_app = typer.Typer(help="Canary rollout: a gated version gets a share of traffic, then is promoted or "
                              "rolled back.", no_args_is_help=True)
deploy_app = typer.Typer(help="vLLM servers of registry versions (what runs where).", no_args_is_help=True)
console = Console()

ACTOR = typer.Option("", help="Who makes the change (audit log); default cli:<login>.")
POLICY = typer.Option(None, help="YAML or JSON file with canary policy fields (deploy.analysis.CanaryPolicy).")
MODE = typer.Option("auto", help="auto, merged (own server) or adapter (hot-loaded into the base server).")


@contextmanager
def _refusals() -> Iterator[None]:
    """Registry/deploy refusals and bad values become one red line and exit 1, never a traceback."""
    from deploy.deployments import DeploymentError
    from registry.errors import RegistryError

    try:
        yield
    except (RegistryError, DeploymentError, ValueError) as exc:
        console.print(f"[red]refused:[/] {exc}")
        raise typer.Exit(1) from None


def _engine() -> Any:
    from core.settings import load_settings
    from tuneloop.compose import open_store

    settings = load_settings()
    return open_store(settings)


def _launcher(engine: Any, mode: str = "auto") -> Any:
    from core.settings import load_settings
    from deploy.launcher import Launcher

    return Launcher.for_settings(engine, load_settings(), mode=mode)


def _policy(path: Path | None) -> Any:
    import yaml

    from core.policies import CanaryPolicy

    if path is None:
        return CanaryPolicy()
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise typer.BadParameter(f"--policy {path}: {exc}") from None
    if not isinstance(data, dict):
        raise typer.BadParameter(f"--policy {path}: expected a mapping of policy fields")
    try:
        return CanaryPolicy.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise typer.BadParameter(f"--policy {path}: {exc}") from None


def _actor(actor: str) -> str:
    return actor or f"cli:{getpass.getuser()}"


def _run(action: Callable[[], Any]) -> Any:
    with _refusals():
        return action()


@canary_app.command("start")
def canary_start(
    version_id: str = typer.Argument(..., help="The candidate, e.g. assistant-v3 (must have passed the gate)."),
    weight: int = typer.Option(10, help="Percent of the alias's traffic, 0-100."),
    serve: bool = typer.Option(True, help="Start its vLLM server (or hot-load its adapter) first."),
    mode: str = MODE,
    reason: str = typer.Option("canary started", help="Why (audit log)."),
    actor: str = ACTOR,
) -> None:
    """Serve a gated candidate and send WEIGHT percent of its alias's traffic to it."""
    from deploy import canary

    engine = _engine()
    with _refusals():
        canary.check_can_start(engine, version_id, weight)  # refuse before minutes of server start-up
        launcher = _launcher(engine, mode) if serve else None
        version = canary.start(engine, version_id, weight, launcher=launcher, actor=_actor(actor), reason=reason)
    console.print(f"[green]canary[/] {version.id} at {weight}% of {version.alias}")


@canary_app.command("status")
def canary_status(
    alias: str = typer.Argument(...), policy: Path | None = POLICY,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Pointers, servers, per-arm figures of the current stage, and what the analysis would decide now."""
    from deploy import canary
    from deploy.deployments import list_deployments

    engine = _engine()
    rules = _policy(policy)
    state, figures, analysis = _run(lambda: canary.evaluate(engine, alias, rules))
    deployments = [d for d in list_deployments(engine, alias=alias) if d.active]
    if as_json:
        console.print_json(json.dumps({
            "alias": alias, "production": state.production_id, "canary": state.canary_id,
            "canary_weight": state.canary_weight, "figures": {k: v.to_dict() for k, v in figures.items()},
            "analysis": analysis.to_dict() if analysis else None,
            "deployments": [d.model_dump(mode="json") for d in deployments],
        }))
        return
    console.print(f"[bold]{alias}[/]: production {state.production_id}, canary {state.canary_id or '-'} "
                  f"at {state.canary_weight}%")
    if figures:
        table = Table("version", "requests", "errors", "up", "down", "p95 ms")
        for arm in figures.values():
            p95 = f"{arm.p95_latency_ms:.0f}" if arm.p95_latency_ms is not None else "-"
            table.add_row(arm.version_id, str(arm.requests), str(arm.errors), str(arm.thumbs_up),
                          str(arm.thumbs_down), p95)
        console.print(table)
    if analysis:
        console.print(f"analysis: [bold]{analysis.action}[/]")
        for i, reason in enumerate(analysis.reasons):
            # the first reason of a stage no request reached: the wait would otherwise look like "too few"
            console.print(f"  - [yellow]{reason}[/]" if analysis.no_canary_traffic and i == 0 else f"  - {reason}")
    _print_deployments(deployments)


@canary_app.command("step")
def canary_step(
    alias: str = typer.Argument(...), policy: Path | None = POLICY, actor: str = ACTOR,
    serve: bool = typer.Option(True, help="Drain and stop servers that leave traffic."),
) -> None:
    """Apply one automatic decision: promote, advance a stage, roll back, or wait."""
    from deploy import canary

    engine = _engine()
    rules = _policy(policy)
    launcher = _launcher(engine) if serve else None
    result = _run(lambda: canary.step(engine, alias, rules, launcher=launcher,
                                      actor=_actor(actor) if actor else canary.CONTROLLER))
    console.print(f"[bold]{result.action}[/] {result.canary_id or ''} (weight now {result.weight}%)")
    for reason in result.reasons:
        console.print(f"  - {reason}")


@canary_app.command("weight")
def canary_weight(
    alias: str = typer.Argument(...), weight: int = typer.Argument(..., help="0-100"),
    reason: str = typer.Option("weight changed", help="Why (audit log)."), actor: str = ACTOR,
) -> None:
    """Change the running canary's share of traffic."""
    from registry import store

    engine = _engine()
    version = _run(lambda: store.set_canary_weight(engine, alias, weight, _actor(actor), reason))
    console.print(f"canary {version.id} now at {weight}%")


@canary_app.command("promote")
def canary_promote(
    alias: str = typer.Argument(...), reason: str = typer.Option("promoted by operator", help="Why (audit log)."),
    actor: str = ACTOR, wait: bool = typer.Option(True, help="Wait for the old production server to drain."),
    drain_timeout: float = typer.Option(600.0, help="Longest wait for the drain, seconds."),
) -> None:
    """Make the canary production now; the old production is archived and its server stopped once drained."""
    from deploy import canary

    engine = _engine()
    launcher = _launcher(engine)
    version = _run(lambda: canary.promote_canary(engine, alias, launcher=launcher, actor=_actor(actor),
                                                 reason=reason))
    console.print(f"[green]promoted[/] {version.id}")
    if wait:
        _report_stopped(canary.wait_drained(launcher, drain_timeout))


@canary_app.command("rollback")
def canary_rollback(
    alias: str = typer.Argument(...), reason: str = typer.Option(..., help="Why (stored with the rejection)."),
    actor: str = ACTOR, wait: bool = typer.Option(True, help="Wait for the canary's server to drain."),
    drain_timeout: float = typer.Option(600.0, help="Longest wait for the drain, seconds."),
) -> None:
    """Take the canary out of traffic (weight 0), mark it rejected, and stop its server once drained."""
    from deploy import canary

    engine = _engine()
    launcher = _launcher(engine)
    version = _run(lambda: canary.rollback_canary(engine, alias, launcher=launcher, actor=_actor(actor),
                                                  reason=reason))
    console.print(f"[yellow]rolled back[/] {version.id} (now {version.status})")
    if wait:
        _report_stopped(canary.wait_drained(launcher, drain_timeout))


@deploy_app.command("list")
def deploy_list(alias: str = typer.Option(None, help="Only this alias."),
                all_: bool = typer.Option(False, "--all", help="Include stopped and failed ones.")) -> None:
    """What runs where."""
    from deploy.deployments import list_deployments

    rows = [d for d in list_deployments(_engine(), alias=alias) if all_ or d.active]
    _print_deployments(rows)


@deploy_app.command("start")
def deploy_start(version_id: str = typer.Argument(...), mode: str = MODE) -> None:
    """Serve a version (no traffic moves: use `tuneloop canary start` for that)."""
    engine = _engine()
    deployment = _run(lambda: _launcher(engine, mode).ensure(version_id))
    console.print(f"[green]{deployment.served_name}[/] {deployment.mode} at {deployment.base_url} "
                  f"(pid {deployment.pid}, log {deployment.log_path})")


@deploy_app.command("stop")
def deploy_stop(version_id: str = typer.Argument(...)) -> None:
    """Stop a version's server now (or unload its adapter)."""
    engine = _engine()
    stopped = _run(lambda: _launcher(engine).stop(version_id))
    console.print(f"stopped {version_id}" if stopped else f"[yellow]{version_id} was not running[/]")


@deploy_app.command("check")
def deploy_check() -> None:
    """Reconcile the table with the servers (after a restart): dead ones are marked failed."""
    engine = _engine()
    _print_deployments(_run(lambda: _launcher(engine).check()))


def _print_deployments(rows: list[Any]) -> None:
    if not rows:
        console.print("no deployments")
        return
    table = Table("version", "mode", "status", "url", "pid", "log")
    for d in rows:
        table.add_row(d.version_id, str(d.mode), str(d.status), d.base_url, str(d.pid or "-"), d.log_path or "-")
    console.print(table)


def _report_stopped(names: list[str]) -> None:
    for name in names:
        console.print(f"stopped {name}")
