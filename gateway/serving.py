"""The gateway's serving state: what the routes need, made once in the app's lifespan, and one client request
on its way through."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from core.settings import Settings
from feedback.interaction_log import InteractionLog
from gateway.auth import KeyCache, Principal
from gateway.metrics import GatewayMetrics
from gateway.protocol import SamplingFields
from gateway.ratelimit import RateLimiter
from gateway.routing import ReplicaPicker, Router
from gateway.upstream import UpstreamClient

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer


@dataclass
class Gateway:
    """What the routes need, made once in the app's lifespan."""

    settings: Settings
    engine: Engine
    client: UpstreamClient
    router: Router
    interaction_log: InteractionLog
    keys: KeyCache
    metrics: GatewayMetrics
    picker: ReplicaPicker
    limiter: RateLimiter  # per-key rpm/tpm (gateway.ratelimit)
    tracer: Tracer | None = None  # a span per finished call (gateway.tracing); None: tracing off, no span made


@dataclass
class Call:
    """One client request on its way through the gateway."""

    endpoint: str
    principal: Principal
    request: SamplingFields
    body: dict[str, Any]
    request_id: str
    idempotency_key: str | None
    started: float
    fingerprint: str | None = None  # set while the request holds the claim on its Idempotency-Key

    @property
    def chat(self) -> bool:
        return self.endpoint == "chat.completions"


def new_request_id() -> str:
    return uuid.uuid4().hex
