"""The composition root's builders: the objects every entry point wires from one `Settings`.

Library packages take these objects as arguments; only `tuneloop` (the CLI, `tuneloop up`, the demo, the ASGI
factory) reads the settings and builds them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from core.db import check_schema, make_engine
from core.settings import Settings, SettingsError
from core.tracing import Tracing, start_tracing
from deploy.launcher import Launcher
from deploy.scheduler import JobContext
from registry.judge_factory import build_judge
from registry.judges import Judge

if TYPE_CHECKING:
    from fastapi import FastAPI


def judge(settings: Settings) -> Judge:
    """The configured judge; LLM verdicts cached in HOME/judge-cache.jsonl."""
    return build_judge(settings.judge, cache_path=settings.home / "judge-cache.jsonl")


def check_cycle_train(settings: Settings) -> None:
    """The cycle's TrainConfig overrides, checked when a process starts rather than inside the nightly run
    (after curation): a bad field is a SettingsError naming its variable."""
    from trainer.config import ConfigError, from_mapping

    try:
        from_mapping(dict(settings.cycle.train))
    except ConfigError as exc:
        message = str(exc).split(": ", 1)[-1]
        raise SettingsError(f"invalid settings: TUNELOOP_CYCLE__TRAIN__{exc.field.upper()}: {message}") from None


def tracing(settings: Settings, role: str) -> Tracing | None:
    """This process's traces (`TUNELOOP_OTEL_ENDPOINT`), as service `{otel_service_name}-{role}`; None: off."""
    return start_tracing(settings.otel_endpoint, f"{settings.otel_service_name}-{role}", settings.otel_sample_ratio)


def gateway_app(settings: Settings, **options: Any) -> FastAPI:
    """The gateway's app as every entry point serves it: the API (`gateway.app.create_app`, with `options`)
    and, unless turned off, the ops console at /console."""
    from gateway.app import create_app
    from tuneloop.console import mount_console

    return mount_console(create_app(settings, **options), settings)


def open_store(settings: Settings) -> Engine:
    """The store's engine, once its schema is checked to be this code's (never migrated here: `tuneloop
    migrate`, and the start of serve and worker, do that on purpose)."""
    check_schema(settings.resolved_database_url)
    return make_engine(settings.resolved_database_url)


def launcher(settings: Settings, engine: Engine, **overrides: Any) -> Launcher:
    """The vLLM launcher of this machine: HOME, the vLLM interpreter, and the address its servers are
    reached at by gateways (advertised_host)."""
    overrides.setdefault("mode", settings.cycle.serve_mode)
    return Launcher.for_settings(engine, settings, **overrides)


def job_context(settings: Settings, **overrides: Any) -> JobContext:
    """What the scheduler's cycle and canary jobs run with in this process (one engine, one launcher for
    every job); the cycle's settings are checked."""
    check_cycle_train(settings)
    engine = open_store(settings)
    values: dict[str, Any] = {"settings": settings, "judge": judge(settings), "engine": engine,
                              "launcher": launcher(settings, engine), **overrides}
    return JobContext(**values)
