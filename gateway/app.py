"""The gateway application: `create_app(settings)`; clients and the log writer live in the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from feedback.interaction_log import InteractionLog, WriterStats
from gateway.auth import KeyCache
from gateway.errors import install_error_handlers
from gateway.metrics import GatewayMetrics
from gateway.proxy import Gateway
from gateway.routes import feedback, openai, ops
from gateway.routing import ReplicaPicker, Router, StaticRouter
from tuneloop.db import make_engine
from tuneloop.settings import Settings, load_settings


def create_app(settings: Settings | None = None, router: Router | None = None) -> FastAPI:
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.resolved_database_url)
        metrics = GatewayMetrics()
        interaction_log = InteractionLog(
            engine,
            max_batch=settings.log_writer.max_batch,
            queue_max=settings.log_writer.queue_max,
            store_wait_s=settings.log_writer.store_wait_s,
            stats=WriterStats(on_commit=metrics.on_commit),
        )
        timeouts = settings.timeouts
        client = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=timeouts.connect, read=None, write=timeouts.connect,
                                  pool=timeouts.connect),
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200),
        )
        await interaction_log.start()
        app.state.gateway = Gateway(
            settings=settings,
            engine=engine,
            client=client,
            router=router or StaticRouter(settings.upstreams),
            interaction_log=interaction_log,
            keys=KeyCache(engine, admin_key=settings.admin_key),
            metrics=metrics,
            picker=ReplicaPicker(),
        )
        try:
            yield
        finally:
            await interaction_log.stop()
            await client.aclose()
            engine.dispose()

    app = FastAPI(title="tuneloop gateway", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    app.include_router(openai.router)
    app.include_router(feedback.router)
    app.include_router(ops.router)
    return app
