"""FastAPI dependencies, as `Annotated` aliases the routes declare."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import Depends, Header, Request

from gateway.auth import Principal, require_admin
from gateway.errors import bad_request, too_large
from gateway.proxy import Gateway, new_request_id


# async, though nothing awaits: FastAPI runs a plain `def` dependency in its thread pool, two thread hops
# per request for a dict lookup
async def get_gateway(request: Request) -> Gateway:
    return request.app.state.gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


async def get_principal(
    gw: GatewayDep, authorization: Annotated[str | None, Header()] = None
) -> Principal:
    return await gw.keys.authenticate(authorization)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def get_admin(principal: PrincipalDep) -> Principal:
    return require_admin(principal)


AdminDep = Annotated[Principal, Depends(get_admin)]


async def get_request_id(request: Request) -> str:
    request.state.request_id = new_request_id()
    return request.state.request_id


RequestIdDep = Annotated[str, Depends(get_request_id)]


async def get_json_body(request: Request, gw: GatewayDep) -> dict[str, Any]:
    return await read_json_body(request, gw.settings.max_body_bytes)


async def read_json_body(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object, read with the size limit enforced while reading (413 past it)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw:
        raise bad_request("The request body is empty; a JSON object is expected.", code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"The request body is not valid JSON: {exc}.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.", code="invalid_json")
    return body


JsonBodyDep = Annotated[dict[str, Any], Depends(get_json_body)]
IdempotencyKeyDep = Annotated[str | None, Header(alias="Idempotency-Key", max_length=256)]
