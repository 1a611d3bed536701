"""The gateway as an ASGI factory for `uvicorn --factory` (`tuneloop serve`, one or several worker processes):
each worker reads the settings and builds its app here, at the composition root."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import TYPE_CHECKING

from core.settings import Settings, load_settings

if TYPE_CHECKING:
    from fastapi import FastAPI

# Python collects its youngest generation every 700 net allocations of container objects. Every request in flight
# keeps its ASGI stack (middleware, routing, handler frames) alive while it waits for its upstream, and at
# concurrency 32 those alone pass 700: collections came every few requests, moved the stacks into the older
# generations and so set off full collections over everything the imports left: 15-30 % of a proxied request's
# CPU time at concurrency 32 (benchmarks/gateway). Above the in-flight set, young collections find it freed.
GC_YOUNG_THRESHOLD = 10_000


def tune_gc_for_serving() -> None:
    """Raise the young-generation threshold of a gateway process (never lower it, never turn GC on)."""
    young, *older = gc.get_threshold()
    if 0 < young < GC_YOUNG_THRESHOLD:
        gc.set_threshold(GC_YOUNG_THRESHOLD, *older)


def gateway_metrics_dir(settings: Settings) -> Path:
    """Where the processes of `tuneloop serve --workers N` (N > 1) keep their metric files (gateway.metrics)."""
    return (settings.home / "metrics").resolve()


def gateway_app() -> FastAPI:
    # Imported here, not above: `tuneloop serve`'s supervising process imports this module for the metrics
    # directory alone and need not carry the app's imports.
    from gateway.metrics import values_in_files
    from tuneloop.compose import gateway_app as build
    from tuneloop.compose import tracing

    tune_gc_for_serving()
    settings = load_settings()
    return build(settings, metrics_dir=gateway_metrics_dir(settings) if values_in_files() else None,
                 tracing=tracing(settings, "gateway"))
