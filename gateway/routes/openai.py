"""OpenAI-compatible inference routes: thin, the logic is in gateway.proxy."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from gateway.deps import GatewayDep, IdempotencyKeyDep, JsonBodyDep, PrincipalDep, RequestIdDep
from gateway.protocol import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from gateway.proxy import handle_completion

router = APIRouter(prefix="/v1")


@router.post("/chat/completions")
async def chat_completions(
    gw: GatewayDep, principal: PrincipalDep, body: JsonBodyDep, request_id: RequestIdDep,
    idempotency_key: IdempotencyKeyDep = None,
) -> Response:
    request = ChatCompletionRequest.model_validate(body)
    return await handle_completion(gw, "chat.completions", principal, request, body, request_id, idempotency_key)


@router.post("/completions")
async def completions(
    gw: GatewayDep, principal: PrincipalDep, body: JsonBodyDep, request_id: RequestIdDep,
    idempotency_key: IdempotencyKeyDep = None,
) -> Response:
    request = CompletionRequest.model_validate(body)
    return await handle_completion(gw, "completions", principal, request, body, request_id, idempotency_key)


@router.get("/models")
async def list_models(gw: GatewayDep, _principal: PrincipalDep) -> ModelList:
    return ModelList(data=[ModelCard(id=name) for name in await gw.router.model_names()])
