"""Prometheus metrics of one gateway process (its own registry, created with the app)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


@dataclass
class GatewayMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
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
        self.log_queue_depth = Gauge(
            "tuneloop_log_writer_queue_depth", "Interaction rows waiting for their commit.", registry=r
        )
        self.log_commit_latency = Histogram(
            "tuneloop_log_commit_seconds", "Duration of one group commit of the interaction log.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1), registry=r,
        )
        self.log_batch_rows = Histogram(
            "tuneloop_log_commit_rows", "Rows per group commit.", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )

    def on_commit(self, seconds: float, rows: int) -> None:
        self.log_commit_latency.observe(seconds)
        self.log_batch_rows.observe(rows)

    def render(self) -> bytes:
        return generate_latest(self.registry)
