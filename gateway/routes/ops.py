"""Health and metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.deps import AdminDep, GatewayDep
from gateway.openapi import error_responses
from gateway.protocol import HealthResponse

router = APIRouter()


@router.get("/health")
async def health(gw: GatewayDep) -> HealthResponse:
    store_ok = gw.interaction_log.healthy
    return HealthResponse(status="ok" if store_ok else "degraded", store="ok" if store_ok else "unavailable")


@router.get(
    "/metrics",
    response_class=Response,  # documents no JSON body: the route returns its own text/plain response
    responses={200: {"description": "Prometheus metrics, in the text exposition format.",
                     "content": {"text/plain": {"schema": {"type": "string"}}}},
               **error_responses(401, 403, "4XX")},
)
async def metrics(gw: GatewayDep, _admin: AdminDep) -> Response:
    gw.metrics.log_queue_depth.set(gw.interaction_log.depth)
    return Response(gw.metrics.render(), media_type=CONTENT_TYPE_LATEST)
