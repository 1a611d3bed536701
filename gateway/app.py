"""The gateway application: `create_app(settings)`; clients and the log writer live in the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.db import make_engine
from core.settings import Settings, load_settings
from feedback.interaction_log import InteractionLog, WriterStats
from gateway.auth import KeyCache
from gateway.deps import check_idempotency_key, read_json_body
from gateway.errors import install_error_handlers, validated
from gateway.metrics import GatewayMetrics
from gateway.protocol import ChatCompletionRequest, CompletionRequest
from gateway.proxy import Gateway, handle_completion, new_request_id
from gateway.ratelimit import RateLimiter
from gateway.registry_router import CompositeRouter, RegistryRouter
from gateway.routes import feedback, openai, ops
from gateway.routing import ReplicaPicker, Router, StaticRouter
from gateway.upstream import UpstreamClient


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
        client = UpstreamClient(connect_timeout=timeouts.connect, max_connections=1000, max_idle=200)
        await interaction_log.start()
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
        )
        try:
            yield
        finally:
            await interaction_log.stop()
            await client.aclose()
            await app.state.gateway.limiter.close()
            engine.dispose()

    # redirect_slashes off: a 307 to a Location built from the client's Host header helps no API client
    app = FastAPI(title="tuneloop gateway", version="0.1.0", lifespan=lifespan, redirect_slashes=False)
    install_error_handlers(app)
    app.add_middleware(RequestContext)
    app.add_middleware(CompletionFastPath)  # added last: outermost; it gives its own responses their request id
    app.include_router(openai.router)
    app.include_router(feedback.router)
    app.include_router(ops.router)
    return app


FAST_ROUTES: dict[str, tuple[str, type[BaseModel]]] = {
    "/v1/chat/completions": ("chat.completions", ChatCompletionRequest),
    "/v1/completions": ("completions", CompletionRequest),
}


class RequestContext:
    """Every HTTP response carries `x-request-id`, and `x-tuneloop-version` once a model version was resolved.

    The id is made here, before routing, so 401s, 404s for unknown routes, 405s and errors raised while the
    body is read carry it too; handlers find it in `request.state.request_id`. The completion fast path, in
    front of it, sets the id itself and puts it on every response it makes (this wrapper cost 4 % of the
    gateway's requests/s at concurrency 32).
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


class CompletionFastPath:
    """POST /v1/chat/completions and /v1/completions without FastAPI's per-request dependency machinery.

    Does what the routes in gateway.routes.openai do with their dependencies, in the same order (key, body,
    Idempotency-Key, then the handler) and with the app's own exception handlers, at a fraction of the cost:
    FastAPI's routing and dependency solving took a third of a proxied request's CPU time. Anything unusual
    (another method, a mounted root path) goes through FastAPI.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = FAST_ROUTES.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if route is None or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:  # the first of repeated headers, as Starlette's Headers.get
            headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
        app: FastAPI = scope["app"]
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id  # the error handlers put it in x-request-id
        request = Request(scope, receive, send)
        try:
            gw: Gateway = app.state.gateway
            principal = await gw.keys.authenticate(headers.get("authorization"))
            body = await read_json_body(request, gw.settings.max_body_bytes)
            idempotency_key = check_idempotency_key(headers.get("idempotency-key"))
            endpoint, model = route
            parsed = validated(model, body)
            response = await handle_completion(gw, endpoint, principal, parsed, body,  # type: ignore[arg-type]
                                               request_id, idempotency_key)
        except Exception as exc:
            handler = next((app.exception_handlers[cls] for cls in type(exc).__mro__
                            if cls in app.exception_handlers and cls not in (Exception, BaseException)), None)
            if handler is None:
                raise  # to ServerErrorMiddleware and the app's 500 handler, as from a route
            response = await handler(request, exc)  # type: ignore[misc]
        await response(scope, receive, send)
