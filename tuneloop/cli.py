"""The `tuneloop` command line (typer + rich). Each package contributes its own sub-app."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tuneloop.db import make_engine, migrate
from tuneloop.settings import load_settings

app = typer.Typer(help="Make a served LLM get better from its own traffic.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys (stored as SHA-256 hashes).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
console = Console()

# Sub-apps of the packages (one line each; keep this block sorted).
# --- sub-apps ---


@app.command("serve")
def serve_command(
    workers: int = typer.Option(1, min=1, help="Gateway processes (stateless; they share the store)."),
) -> None:
    """Run the gateway alone, routing to the upstreams in the settings."""
    import uvicorn

    settings = load_settings()
    migrate(settings.resolved_database_url)
    uvicorn.run("gateway.app:create_app", factory=True, host=settings.host, port=settings.port, workers=workers,
                log_level="warning")


@app.command("up")
def up_command() -> None:
    """Bring up the whole system on the embedded default: demo model, real vLLM, the gateway."""
    import uvicorn

    from deploy.quickstart import DEFAULT_ALIAS, bring_up, usage_panel
    from gateway.app import create_app

    settings = load_settings()
    quick = bring_up(settings, console)
    settings = settings.model_copy(update={"upstreams": {DEFAULT_ALIAS: [quick.vllm.base_url]}})
    base_url = f"http://{settings.host}:{settings.port}"
    console.print(usage_panel(base_url, quick.app_key))
    try:
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="warning")
    finally:
        quick.vllm.stop()


@app.command("migrate")
def migrate_command() -> None:
    """Create or upgrade the database schema (explicit migrations)."""
    settings = load_settings()
    migrate(settings.resolved_database_url)
    console.print(f"[green]database at head[/]: {settings.resolved_database_url}")


@app.command("demo-model")
def demo_model(out_dir: Path = typer.Argument(..., help="Where to write the model."), seed: int = 0) -> None:
    """Build the small local demo base model (random Llama, local tokenizer, chat template)."""
    from trainer.demo_model import build_demo_model

    path = build_demo_model(out_dir, seed=seed)
    console.print(f"[green]demo model written[/] to {path}")


@keys_app.command("create")
def keys_create(
    scope: str = typer.Option("app", help="app or admin"), name: str = typer.Option("", help="A label.")
) -> None:
    """Create a key and print it once; only its hash is stored."""
    from gateway.keys import Scope, create_key

    try:
        parsed = Scope(scope)
    except ValueError:
        raise typer.BadParameter(f"scope must be one of: {', '.join(s.value for s in Scope)}") from None
    settings = load_settings()
    migrate(settings.resolved_database_url)
    public, plain = create_key(make_engine(settings.resolved_database_url), parsed, name)
    console.print(f"[bold]{plain}[/]  ({public.id}, scope {public.scope.value}; shown once)")


@keys_app.command("list")
def keys_list() -> None:
    """List keys (never their secrets)."""
    from gateway.keys import list_keys

    settings = load_settings()
    table = Table("id", "name", "scope", "created", "revoked")
    for key in list_keys(make_engine(settings.resolved_database_url)):
        table.add_row(key.id, key.name, key.scope.value, str(key.created_at)[:19], str(key.revoked_at or "")[:19])
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke a key by id."""
    from gateway.keys import revoke_key

    settings = load_settings()
    if not revoke_key(make_engine(settings.resolved_database_url), key_id):
        console.print(f"[red]no active key {key_id}[/]")
        raise typer.Exit(1)
    console.print(f"revoked {key_id}")


if __name__ == "__main__":
    app()
