"""`tuneloop curate` and `tuneloop datasets list|show|policy`."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from core.clock import as_utc
from core.settings import load_settings
from feedback.curate import ALL_HISTORY, CurationResult, curate
from feedback.datasets import get_dataset, list_datasets
from feedback.policy import CurationPolicy
from tuneloop.compose import open_store

datasets_app = typer.Typer(help="Curated dataset versions.", no_args_is_help=True)
console = Console()


def _parse_when(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    if value == "all":
        return ALL_HISTORY
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{option}: {value!r} is not an ISO date/time or 'all'") from None
    return as_utc(parsed)


def _load_policy(path: Path | None, overrides: dict[str, Any]) -> CurationPolicy:
    data: dict[str, Any] = {}
    if path is not None:
        if not path.is_file():
            raise typer.BadParameter(f"--policy: {path} does not exist")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise typer.BadParameter(f"--policy: {path} must hold a mapping of policy fields")
        data.update(loaded)
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return CurationPolicy.from_mapping(data)
    except (TypeError, ValueError) as exc:
        raise typer.BadParameter(f"policy: {exc}") from None


def curate_command(
    alias: str = typer.Option(..., help="The model alias whose traffic to curate."),
    since: str | None = typer.Option(None, help="ISO date/time, or 'all'; default: end of the last version."),
    until: str | None = typer.Option(None, help="ISO date/time; default: now."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Count everything, write nothing."),
    seed: list[Path] = typer.Option([], help="Chat-format JSONL to import as seed data (repeatable)."),
    policy_file: Path | None = typer.Option(None, "--policy", help="YAML/JSON file of policy fields."),
    eval_fraction: float | None = typer.Option(None, help="Override the policy's eval_fraction."),
    threshold: float | None = typer.Option(None, help="Override the policy's near_dup_threshold."),
    tokenizer: str | None = typer.Option(None, help="Override the policy's tokenizer path."),
) -> None:
    """Build the next dataset version of an alias from its logged interactions and feedback."""
    policy = _load_policy(
        policy_file, {"eval_fraction": eval_fraction, "near_dup_threshold": threshold, "tokenizer": tokenizer}
    )
    settings = load_settings()
    engine = open_store(settings)
    columns = (TextColumn("[bold]curating {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(alias, total=None)

        def progress(event: str, n: int) -> None:
            if event == "total":
                bar.update(task, total=n)
            else:
                bar.advance(task, n)

        try:
            result = curate(
                engine, settings, policy, alias, since=_parse_when(since, "--since"), dry_run=dry_run,
                until=_parse_when(until, "--until"), seed_files=seed, progress=progress,
            )
        except ValueError as exc:
            console.print(f"[red]curation failed:[/] {exc}")
            raise typer.Exit(1) from None
    _print_summary(result)


def _print_summary(result: CurationResult) -> None:
    table = Table("stage", "reason", "count", title=f"curation of {result.alias}")
    counts = result.counts
    for stage in ("interactions", "excluded", "selected", "scrubbed", "filtered", "deduplicated", "split"):
        for reason, n in counts.get(stage, {}).items():
            table.add_row(stage, reason, str(n))
    if counts.get("seed_bad_lines"):
        table.add_row("seed", "bad_lines", str(counts["seed_bad_lines"]))
    if counts.get("earlier_version_examples"):
        table.add_row("dedup", "earlier_version_examples", str(counts["earlier_version_examples"]))
    console.print(table)
    for bad in result.bad_lines[:20]:
        console.print(f"[yellow]{bad.file}:{bad.line}[/]: {bad.reason}")
    if len(result.bad_lines) > 20:
        console.print(f"... {counts['seed_bad_lines'] - 20} more bad lines (see the manifest)")
    if result.dry_run:
        what = f"would be {result.sha256[:16]}" if result.sha256 else "nothing new"
        console.print(f"[bold]dry run[/]: {result.n_train} train / {result.n_eval} eval, {what}")
    elif result.dataset_id is None:
        console.print("[bold]nothing new[/]: no dataset written")
    else:
        note = " (already existed)" if result.already_existed else ""
        console.print(f"[green]{result.dataset_id}[/]{note}: {result.n_train} train / {result.n_eval} eval "
                      f"in {result.paths['dir']}")


@datasets_app.command("list")
def datasets_list(alias: str | None = typer.Option(None, help="Only this alias.")) -> None:
    """Dataset versions, oldest first."""
    settings = load_settings()
    open_store(settings)  # checks the schema; never migrates
    table = Table(Column("id", no_wrap=True), "alias", "train", "eval", "since", "until")
    for d in list_datasets(open_store(settings), alias):
        table.add_row(d.id, d.alias, str(d.n_train), str(d.n_eval), _minute(d.window_start), _minute(d.window_end))
    console.print(table)


def _minute(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value is not None else "start"


@datasets_app.command("show")
def datasets_show(dataset_id: str = typer.Argument(..., help="A dataset id (ds-...).")) -> None:
    """A version's manifest (without its list of source ids)."""
    settings = load_settings()
    dataset = get_dataset(open_store(settings), dataset_id)
    if dataset is None:
        console.print(f"[red]no dataset {dataset_id}[/]")
        raise typer.Exit(1)
    manifest = dataset.manifest()
    n_sources = len(manifest.pop("source_interaction_ids", []))
    console.print_json(json.dumps(manifest))
    console.print(f"{n_sources} source interactions; files in {dataset.path}")


@datasets_app.command("policy")
def datasets_policy() -> None:
    """The curation policy fields, their defaults and meaning (for --policy files)."""
    table = Table("field", "default", "meaning")
    for name, default, text in CurationPolicy.field_help():
        table.add_row(name, default if len(default) < 60 else default[:57] + "...", text)
    console.print(table)
