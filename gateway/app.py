"""The gateway application: `create_app(settings)`; clients and the log writer live in the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.db import make_engine
from core.settings import Settings
from core.tracing import Tracing
from feedback.interaction_log import InteractionLog, WriterStats
from gateway.auth import KeyCache
from gateway.errors import install_error_handlers
from gateway.metrics import GatewayMetrics
from gateway.ratelimit import RateLimiter
from gateway.registry_router import CompositeRouter, RegistryRouter
from gateway.routes import feedback, openai, ops
from gateway.routing import ReplicaPicker, Router, StaticRouter
from gateway.serving import Gateway, new_request_id
from gateway.tracing import http_telemetry
from gateway.upstream import UpstreamClient


def create_app(
    settings: Settings, router: Router | None = None, metrics_dir: Path | None = None,
    tracing: Tracing | None = None,
) -> FastAPI:
    """The app for these settings; callers load them (library code never reads the environment itself).

    `metrics_dir`: this is one of several gateway processes, whose metrics meet in that directory
    (`gateway.metrics`); the caller started prometheus_client on it. `tracing`: a span per call
    (`gateway.tracing`), flushed and shut down when the app stops; None: no span is made."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.resolved_database_url)
        metrics = GatewayMetrics(multiprocess_dir=metrics_dir)
        interaction_log = InteractionLog(
            engine,
            max_batch=settings.log_writer.max_batch,
            queue_max=settings.log_writer.queue_max,
            store_wait_s=settings.log_writer.store_wait_s,
            stats=WriterStats(on_commit=metrics.on_commit),
        )
        timeouts = settings.timeouts
        client = UpstreamClient(connect_timeout=timeouts.connect, max_connections=1000, max_idle=200)
        await interaction_log.start()
        # A scrape sets the queue depth of the process it reaches; the other processes' must be fresh on their own
        depth_refresh = asyncio.create_task(_refresh_queue_depth(metrics, interaction_log)) if metrics_dir else None
        app.state.gateway = Gateway(
            settings=settings,
            engine=engine,
            client=client,
            # static upstreams from the settings win; every other alias comes from the registry
            router=router or CompositeRouter([StaticRouter(settings.upstreams),
                                              RegistryRouter(engine, settings.routing_cache_s)]),
            interaction_log=interaction_log,
            keys=KeyCache(engine, admin_key=settings.admin_key),
            metrics=metrics,
            picker=ReplicaPicker(),
            limiter=RateLimiter(settings.redis_url or "memory://"),  # Redis: one budget for all processes
            tracer=tracing.tracer if tracing is not None else None,
        )
        try:
            yield
        finally:
            if depth_refresh is not None:
                depth_refresh.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await depth_refresh
            await interaction_log.stop()
            await client.aclose()
            await app.state.gateway.limiter.close()
            engine.dispose()
            if tracing is not None:
                await asyncio.to_thread(tracing.shutdown)  # the last spans' export, off the event loop

    # redirect_slashes off: a 307 to a Location built from the client's Host header helps no API client
    app = FastAPI(title="tuneloop gateway", version="0.1.0", lifespan=lifespan, redirect_slashes=False,
                  telemetry=http_telemetry(tracing))
    install_error_handlers(app)
    app.add_middleware(RequestContext)
    app.include_router(openai.router)
    app.include_router(feedback.router)
    app.include_router(ops.router)
    return app


async def _refresh_queue_depth(metrics: GatewayMetrics, interaction_log: InteractionLog, every_s: float = 1.0) -> None:
    while True:
        metrics.log_queue_depth.set(interaction_log.depth)
        await asyncio.sleep(every_s)


class RequestContext:
    """Every HTTP response carries `x-request-id`, and `x-tuneloop-version` once a model version was resolved.

    The id is made here, before routing, so 401s, 404s for unknown routes, 405s and errors raised while the
    body is read carry it too; handlers find it in `request.state.request_id`. A plain ASGI wrapper, not
    Starlette's BaseHTTPMiddleware, which would cost every request a task and a stream.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.setdefault("headers", [])
                if not any(name.lower() == b"x-request-id" for name, _ in headers):
                    headers.append(header)
            await send(message)

        await self.app(scope, receive, send_with_id)
