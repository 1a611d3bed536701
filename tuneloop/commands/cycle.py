"""`tuneloop cycle run-now|request|list|show` and `tuneloop schedule show|set|pause|resume`."""

from __future__ import annotations

import getpass
import json

import typer
from rich.console import Console
from rich.table import Table

from core.settings import load_settings
from deploy import controls
from deploy.cycle_runs import get_run, list_runs
from deploy.scheduler import ScheduleError, run_cycle_now, set_schedule, show_schedule
from registry.errors import RegistryError
from tuneloop.compose import job_context, open_store

cycle_app = typer.Typer(help="The improvement cycle: curate, train, merge, gate, canary.", no_args_is_help=True)
schedule_app = typer.Typer(help="When the cycle runs (APScheduler, stored in the database).", no_args_is_help=True)
console = Console()


@cycle_app.command("run-now")
def run_now(alias: str = typer.Option("demo", help="The model alias to improve.")) -> None:
    """Run one cycle now (skipped, and recorded, if another cycle holds the lease)."""
    settings = load_settings()
    outcome = run_cycle_now(job_context(settings), alias, trigger="manual")
    console.print(f"cycle {outcome['id']}: [bold]{outcome['status']}[/] {outcome['reason'] or ''}")
    if outcome["status"] == "failed":
        raise typer.Exit(1)


def _actor() -> str:
    return f"cli:{getpass.getuser()}"


def _refused(exc: Exception) -> typer.Exit:
    console.print(f"[red]refused[/]: {exc}")
    return typer.Exit(1)


@cycle_app.command("request")
def request_command(alias: str = typer.Argument(..., help="The model alias to improve.")) -> None:
    """Ask the running worker for a cycle now (its leader takes requests every worker.supervise_s)."""
    try:
        state = controls.request_run(open_store(load_settings()), alias, _actor())
    except RegistryError as exc:
        raise _refused(exc) from None
    console.print(f"cycle of {alias} requested at {state.run_requested_at:%H:%M:%S} by {state.run_requested_by}")


@cycle_app.command("list")
def list_command(alias: str | None = typer.Option(None), limit: int = typer.Option(20, min=1)) -> None:
    """Recent cycles, newest first."""
    settings = load_settings()
    table = Table("id", "alias", "trigger", "status", "started", "dataset", "version", "reason")
    for run in list_runs(open_store(settings), alias, limit):
        table.add_row(str(run.id), run.alias, run.trigger, str(run.status), str(run.started_at)[:19],
                      run.dataset_id or "", run.version_id or "", (run.reason or run.error or "")[:60])
    console.print(table)


@cycle_app.command("show")
def show_command(run_id: int) -> None:
    """One cycle with its steps and their figures."""
    settings = load_settings()
    run = get_run(open_store(settings), run_id)
    if run is None:
        console.print(f"[red]no cycle run {run_id}[/]")
        raise typer.Exit(1)
    console.print(f"cycle {run.id} of {run.alias}: [bold]{run.status}[/] {run.reason or ''} {run.error or ''}")
    table = Table("step", "status", "started", "finished", "figures / error")
    for step in run.steps:
        detail = json.dumps(step.figures, default=str)[:200] if step.figures else (step.error or "")[-200:]
        table.add_row(step.name, str(step.status), str(step.started_at)[11:19], str(step.finished_at or "")[11:19],
                      detail)
    console.print(table)


@schedule_app.command("show")
def schedule_show() -> None:
    """Scheduled jobs and their next run."""
    settings = load_settings()
    open_store(settings)  # checks the schema; never migrates
    table = Table("job", "trigger", "next run")
    for job in show_schedule(settings):
        table.add_row(job.id, job.trigger, str(job.next_run or "paused"))
    console.print(table)


@schedule_app.command("set")
def schedule_set(alias: str = typer.Option(..., help="Model alias."),
                 cron: str = typer.Option(..., help="Crontab expression, e.g. '0 3 * * *'.")) -> None:
    """Set when the cycle of an alias runs; a bad cron or an unknown alias is refused."""
    settings = load_settings()
    open_store(settings)  # checks the schema; never migrates
    try:
        job = set_schedule(settings, alias, cron)
    except ScheduleError as exc:
        console.print(f"[red]refused[/]: {exc}")
        raise typer.Exit(2) from None
    console.print(f"{job.id}: {cron} (next run {job.next_run})")


@schedule_app.command("pause")
def schedule_pause(alias: str = typer.Argument(..., help="Model alias."),
                   reason: str = typer.Option(..., help="Why (shown with every skipped cycle).")) -> None:
    """Stop the alias's scheduled cycles until resumed (the canary watch goes on; requested cycles still run)."""
    try:
        controls.pause(open_store(load_settings()), alias, _actor(), reason)
    except RegistryError as exc:
        raise _refused(exc) from None
    console.print(f"schedule of {alias} paused")


@schedule_app.command("resume")
def schedule_resume(alias: str = typer.Argument(..., help="Model alias.")) -> None:
    """Run the alias's scheduled cycles again."""
    try:
        controls.resume(open_store(load_settings()), alias, _actor())
    except RegistryError as exc:
        raise _refused(exc) from None
    console.print(f"schedule of {alias} resumed")
