"""Prometheus metrics of the gateway: one process's own registry, or, when the gateway runs as several processes
(`tuneloop serve --workers N`), prometheus-client's multiprocess mode, so that one scrape of any process shows
them all."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


def values_in_files() -> bool:
    """Whether this process's prometheus_client keeps its values in per-process files (multiprocess mode).

    prometheus_client decides once, when it is imported, from PROMETHEUS_MULTIPROC_DIR; the composition root sets
    that variable before it starts the gateway processes and asks this to know which mode they are in."""
    return values.ValueClass is not values.MutexValue


@dataclass
class GatewayMetrics:
    """The gateway's metrics. With `multiprocess_dir`, every process writes its values to files there (the
    directory prometheus_client was started with) and `render` adds up the files of all processes."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    multiprocess_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.multiprocess_dir is not None and not values_in_files():
            raise RuntimeError("metrics across processes need PROMETHEUS_MULTIPROC_DIR set before prometheus_client "
                               "is imported (`tuneloop serve --workers N` sets it)")
        r = self.registry
        self.requests = Counter(
            "tuneloop_requests", "Requests by endpoint, model version and status code.",
            ["endpoint", "version", "status"], registry=r,
        )
        self.latency = Histogram(
            "tuneloop_request_latency_seconds", "Request latency, first byte in to last byte out.",
            ["endpoint"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.ttft = Histogram(
            "tuneloop_time_to_first_token_seconds", "Streamed requests: time to the first content chunk.",
            ["endpoint"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.upstream_errors = Counter(
            "tuneloop_upstream_errors", "Upstream failures by kind.", ["kind"], registry=r
        )
        # Across processes: the rows waiting in the processes alive now (a dead one's queue is gone with it).
        self.log_queue_depth = Gauge(
            "tuneloop_log_writer_queue_depth", "Interaction rows waiting for their commit.", registry=r,
            multiprocess_mode="livesum",
        )
        self.log_commit_latency = Histogram(
            "tuneloop_log_commit_seconds", "Duration of one group commit of the interaction log.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1), registry=r,
        )
        self.log_batch_rows = Histogram(
            "tuneloop_log_commit_rows", "Rows per group commit.", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self._scrape_registry = r
        if self.multiprocess_dir is not None:
            # The metrics above made this process's files; none there means prometheus_client writes to another
            # directory than the one scraped, and every scrape would silently miss this process.
            if not (self.multiprocess_dir / f"histogram_{os.getpid()}.db").exists():
                raise RuntimeError(f"PROMETHEUS_MULTIPROC_DIR is not {self.multiprocess_dir}")
            # A registry of its own: registering the collector beside the live metrics would export them twice.
            self._scrape_registry = CollectorRegistry()
            MultiProcessCollector(self._scrape_registry, path=str(self.multiprocess_dir))

    @property
    def multiprocess(self) -> bool:
        return self.multiprocess_dir is not None

    def on_commit(self, seconds: float, rows: int) -> None:
        self.log_commit_latency.observe(seconds)
        self.log_batch_rows.observe(rows)

    def render(self) -> bytes:
        if self.multiprocess_dir is not None:
            forget_dead_processes(self.multiprocess_dir)
        return generate_latest(self._scrape_registry)


def forget_dead_processes(directory: Path) -> None:
    """Drop the live gauges of gateway processes that have exited (their counters stay: totals never go down).

    prometheus_client leaves this to the process manager (gunicorn's `child_exit` hook); uvicorn's supervisor has
    no such hook, so the scraping process checks. A pid reused by an unrelated process keeps its old gauge until
    that process exits too."""
    for path in directory.glob("gauge_live*_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        if not _alive(pid):
            mark_process_dead(pid, str(directory))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
