"""OpenAI-compatible inference routes: thin, the logic is in gateway.proxy.

The completion routes carry nearly all the traffic, so their handlers take the raw request and call
`admit_completion` instead of declaring dependencies, and `RequestRoute` calls them without FastAPI's
per-request parameter solving. They are ordinary routes all the same: every request to them runs through them,
so a check added to `admit_completion` or a handler, or a dependency declared on the route, its router or the
app, applies to real traffic (a dependency makes FastAPI solve it, at FastAPI's cost).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from typing import Any

import fastapi.routing
from fastapi import APIRouter, Request
from fastapi.dependencies.models import Dependant
from fastapi.responses import Response
from fastapi.routing import APIRoute

from gateway.deps import COMPLETION_HEADER_PARAMETERS, GatewayDep, PrincipalDep, admit_completion
from gateway.openapi import completion_response, error_responses, json_request_body
from gateway.protocol import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from gateway.proxy import handle_completion


class RequestRoute(APIRoute):
    """A route whose endpoint takes only the raw request and returns a Response is called directly.

    FastAPI's per-request handler solves the endpoint's parameters even when the only one is the request (and
    records telemetry around it): about 15 µs of the ~250 µs a proxied completion costs the gateway's process.
    A route with anything to solve (another parameter, or a dependency of the route, its router, an include or
    the app) gets FastAPI's handler, so what it declares runs. `get_route_handler` is FastAPI's hook for a route
    class; it runs once per route and inclusion, not per request.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        # FastAPI (0.165, pinned) builds an included route's handler with the inclusion's context set; its dependant
        # holds the include's and the app's dependencies too. Without that context (another FastAPI), nothing
        # proves the route plain: keep FastAPI's handler.
        context_var = getattr(fastapi.routing, "_effective_route_context_var", None)
        if context_var is None:
            return handler
        context = context_var.get()
        dependant = context.dependant if context is not None else self.dependant
        return self.endpoint if isinstance(dependant, Dependant) and takes_request_only(self.endpoint, dependant) \
            else handler


def takes_request_only(endpoint: Callable[..., Any], dependant: Dependant) -> bool:
    """True when calling `endpoint(request)` is all FastAPI's handler would do: one parameter, the request, no
    dependencies, and a Response returned (FastAPI would serialize anything else)."""
    signature = inspect.signature(endpoint, eval_str=True)
    returns = signature.return_annotation
    return (len(signature.parameters) == 1 and dependant.request_param_name is not None
            and not dependant.dependencies and inspect.iscoroutinefunction(endpoint)
            and isinstance(returns, type) and issubclass(returns, Response))


router = APIRouter(prefix="/v1", route_class=RequestRoute)


@router.post(
    "/chat/completions",
    openapi_extra={**json_request_body(ChatCompletionRequest, "OpenAI's chat completion request; fields the "
                                       "gateway does not check are passed to the upstream unchanged."),
                   "parameters": COMPLETION_HEADER_PARAMETERS},
    responses={**completion_response("chat.completion", "The chat completion, or its chunks as server-sent "
                                     "events when `stream` is true."),
               **error_responses(400, 401, 404, 409, 413, 422, 429, 502, 503, 504, "4XX")},
)
async def chat_completions(request: Request) -> Response:
    admitted = await admit_completion(request, ChatCompletionRequest)
    return await handle_completion(admitted.gateway, "chat.completions", admitted.principal, admitted.parsed,
                                   admitted.body, request.state.request_id, admitted.idempotency_key)


@router.post(
    "/completions",
    openapi_extra={**json_request_body(CompletionRequest, "OpenAI's (legacy) completion request; fields the "
                                       "gateway does not check are passed to the upstream unchanged."),
                   "parameters": COMPLETION_HEADER_PARAMETERS},
    responses={**completion_response("text_completion", "The completion, or its chunks as server-sent events "
                                     "when `stream` is true."),
               **error_responses(400, 401, 404, 409, 413, 422, 429, 502, 503, 504, "4XX")},
)
async def completions(request: Request) -> Response:
    admitted = await admit_completion(request, CompletionRequest)
    return await handle_completion(admitted.gateway, "completions", admitted.principal, admitted.parsed,
                                   admitted.body, request.state.request_id, admitted.idempotency_key)


@router.get("/models", responses=error_responses(401, "4XX"))
async def list_models(gw: GatewayDep, _principal: PrincipalDep) -> ModelList:
    return ModelList(data=[ModelCard(id=name) for name in await gw.router.model_names()])
