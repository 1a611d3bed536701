"""Feedback on served answers, and the admin view of one interaction."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response

from feedback.interaction_log import (
    StoreUnavailable,
    find_interaction,
    interaction_with_feedback,
    upsert_feedback,
)
from gateway.deps import AdminDep, GatewayDep, JsonBodyDep, PrincipalDep
from gateway.errors import forbidden, not_found, store_unavailable, validated
from gateway.openapi import error_responses, json_request_body
from gateway.protocol import FeedbackCreate, FeedbackPublic, InteractionPublic

router = APIRouter(prefix="/v1")


@router.post(
    "/feedback",
    openapi_extra=json_request_body(FeedbackCreate, "A rating of one served answer, by its response id."),
    responses=error_responses(400, 401, 403, 404, 413, 429, 503, "4XX"),
)
async def post_feedback(
    gw: GatewayDep, principal: PrincipalDep, body: JsonBodyDep, response: Response
) -> FeedbackPublic:
    response.headers.update(await gw.limiter.admit(principal))  # a rating counts against the key's rpm
    feedback = validated(FeedbackCreate, body)
    interaction = await asyncio.to_thread(find_interaction, gw.engine, feedback.response_id)
    if interaction is None:
        raise not_found(f"No response with id '{feedback.response_id}'.", param="response_id")
    if interaction.api_key_id != principal.key_id and not principal.is_admin:
        raise forbidden("Only the API key that made the request, or an admin key, may rate it.")
    try:
        return await asyncio.to_thread(upsert_feedback, gw.engine, interaction.id, feedback, principal.key_id)
    except StoreUnavailable:
        raise store_unavailable() from None


@router.get("/interactions/{interaction_id}", responses=error_responses(401, 403, 404, "4XX"))
async def get_interaction(gw: GatewayDep, _admin: AdminDep, interaction_id: str) -> InteractionPublic:
    found = await asyncio.to_thread(find_interaction, gw.engine, interaction_id)
    public = await asyncio.to_thread(interaction_with_feedback, gw.engine, found.id) if found else None
    if public is None:
        raise not_found(f"No interaction with id '{interaction_id}'.", param="interaction_id")
    return public
