"""Prometheus metrics of the worker process (`tuneloop worker`): what its cycles and canary watches did.

The worker is one process with its own registry and its own small HTTP server (settings.worker.metrics_port),
apart from the gateway's /metrics. `observe_run` and `observe_canary` turn what the jobs return into samples;
they read nothing but their arguments.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server

from deploy.cycle_runs import CycleRunPublic

# A cycle step takes from well under a second (a curation that finds too little) to hours (a training run).
STEP_BUCKETS = (0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)


@dataclass
class WorkerMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.step_seconds = Histogram(
            "tuneloop_cycle_step_seconds", "Duration of one improvement-cycle step, by step and outcome.",
            ["step", "outcome"], buckets=STEP_BUCKETS, registry=r,
        )
        self.cycle_runs = Counter(
            "tuneloop_cycle_runs", "Improvement-cycle runs by alias and outcome (succeeded, skipped, failed...).",
            ["alias", "status"], registry=r,
        )
        self.training_tokens_per_second = Gauge(
            "tuneloop_training_tokens_per_second", "Throughput of the alias's last training run.", ["alias"],
            registry=r,
        )
        self.canary_actions = Counter(
            "tuneloop_canary_actions", "Canary watch decisions by alias: promote, rollback, advance, wait.",
            ["alias", "action"], registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


def observe_run(metrics: WorkerMetrics, run: CycleRunPublic) -> None:
    """Record a finished cycle run as the store returns it (`deploy.cycle_runs.get_run`), steps included."""
    metrics.cycle_runs.labels(run.alias, str(run.status)).inc()
    for step in run.steps:
        if step.finished_at is None:  # never finished (its process died): no duration to tell
            continue
        seconds = max((step.finished_at - step.started_at).total_seconds(), 0.0)
        metrics.step_seconds.labels(step.name, str(step.status)).observe(seconds)
        # The train step reports it; None when the trainer could not measure it (no tokens counted).
        tokens_per_second = step.figures.get("tokens_per_second")
        if isinstance(tokens_per_second, int | float) and not isinstance(tokens_per_second, bool):
            metrics.training_tokens_per_second.labels(run.alias).set(tokens_per_second)


def observe_canary(metrics: WorkerMetrics, alias: str, action: str) -> None:
    """Record one canary watch decision (deploy.analysis.Action, or its string)."""
    metrics.canary_actions.labels(alias, str(action)).inc()


@dataclass
class MetricsServer:
    """The worker's /metrics server, running in a daemon thread until `stop`."""

    host: str
    port: int
    _server: WSGIServer
    _thread: threading.Thread

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def serve_worker_metrics(metrics: WorkerMetrics, host: str, port: int) -> MetricsServer | None:
    """Serve `metrics` over HTTP on host:port; port 0 means not served (the setting's "off"), and gives None."""
    if port == 0:
        return None
    server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    return MetricsServer(host, port, server, thread)
