"""OpenAI-compatible inference routes: thin, the logic is in gateway.proxy."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from gateway.deps import GatewayDep, IdempotencyKeyDep, JsonBodyDep, PrincipalDep, RequestIdDep
from gateway.errors import validated
from gateway.openapi import completion_response, error_responses, json_request_body
from gateway.protocol import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from gateway.proxy import handle_completion

router = APIRouter(prefix="/v1")


@router.post(
    "/chat/completions",
    openapi_extra=json_request_body(ChatCompletionRequest, "OpenAI's chat completion request; fields the gateway "
                                    "does not check are passed to the upstream unchanged."),
    responses={**completion_response("chat.completion", "The chat completion, or its chunks as server-sent "
                                     "events when `stream` is true."),
               **error_responses(400, 401, 404, 409, 413, 422, 429, 502, 503, 504, "4XX")},
)
async def chat_completions(
    gw: GatewayDep, principal: PrincipalDep, body: JsonBodyDep, request_id: RequestIdDep,
    idempotency_key: IdempotencyKeyDep,
) -> Response:
    request = validated(ChatCompletionRequest, body)
    return await handle_completion(gw, "chat.completions", principal, request, body, request_id, idempotency_key)


@router.post(
    "/completions",
    openapi_extra=json_request_body(CompletionRequest, "OpenAI's (legacy) completion request; fields the gateway "
                                    "does not check are passed to the upstream unchanged."),
    responses={**completion_response("text_completion", "The completion, or its chunks as server-sent events "
                                     "when `stream` is true."),
               **error_responses(400, 401, 404, 409, 413, 422, 429, 502, 503, 504, "4XX")},
)
async def completions(
    gw: GatewayDep, principal: PrincipalDep, body: JsonBodyDep, request_id: RequestIdDep,
    idempotency_key: IdempotencyKeyDep,
) -> Response:
    request = validated(CompletionRequest, body)
    return await handle_completion(gw, "completions", principal, request, body, request_id, idempotency_key)


@router.get("/models", responses=error_responses(401, "4XX"))
async def list_models(gw: GatewayDep, _principal: PrincipalDep) -> ModelList:
    return ModelList(data=[ModelCard(id=name) for name in await gw.router.model_names()])
