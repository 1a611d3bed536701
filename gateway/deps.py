"""What a request must pass before a route acts on it: FastAPI dependencies as `Annotated` aliases the routes
declare, and `admit_completion`, the same checks as one plain call for the completion routes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar

import orjson
from fastapi import Depends, Header, Request
from pydantic import BaseModel
from starlette.requests import ClientDisconnect

from gateway.auth import Principal, require_admin
from gateway.errors import GatewayError, bad_request, invalid_idempotency_key, too_large, validated
from gateway.serving import Gateway

ModelT = TypeVar("ModelT", bound=BaseModel)

IDEMPOTENCY_KEY_MAX = 256
# Deeper JSON is refused while parsing: re-encoding it for the upstream or the store fails past 254 levels, and
# no OpenAI request needs more than a handful (tool schemas nest a few levels).
MAX_JSON_DEPTH = 64


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
    return request.state.request_id  # set for every request by gateway.app.RequestContext


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
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect:  # nobody is left to read the answer; an error, not a crash to log
        raise GatewayError(400, "The client closed the connection before sending the whole body.",
                           code="client_disconnected") from None
    raw = b"".join(chunks)
    if not raw:
        raise bad_request("The request body is empty; a JSON object is expected.", code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"The request body is not valid JSON: {exc}.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.", code="invalid_json")
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and json_depth_exceeds(body, MAX_JSON_DEPTH):
        raise bad_request(f"The request body nests deeper than {MAX_JSON_DEPTH} levels.", code="invalid_json")
    return body


def json_depth_exceeds(value: Any, limit: int) -> bool:
    """True when containers nest more than `limit` deep (iterative: a deep body must not exhaust the stack)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


def check_idempotency_key(value: str | None) -> str | None:
    """An Idempotency-Key header must name something: an empty key would make every keyless retry one request."""
    if value is None:
        return None
    if not value.strip():
        raise invalid_idempotency_key("The Idempotency-Key header is empty; send a unique key or no header.")
    if len(value) > IDEMPOTENCY_KEY_MAX:
        raise invalid_idempotency_key(f"The Idempotency-Key header is longer than {IDEMPOTENCY_KEY_MAX} characters.")
    return value


async def get_idempotency_key(
    # the bounds are documented in the schema and enforced by check_idempotency_key (for one error wording)
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", json_schema_extra={
        "minLength": 1, "maxLength": IDEMPOTENCY_KEY_MAX, "pattern": r"\S"})] = None,
) -> str | None:
    return check_idempotency_key(idempotency_key)


JsonBodyDep = Annotated[dict[str, Any], Depends(get_json_body)]
IdempotencyKeyDep = Annotated[str | None, Depends(get_idempotency_key)]


@dataclass(slots=True)
class Admitted(Generic[ModelT]):
    """A completion request that passed every check, with what the handler needs from them."""

    gateway: Gateway
    principal: Principal
    body: dict[str, Any]
    parsed: ModelT
    idempotency_key: str | None


async def admit_completion(request: Request, model: type[ModelT]) -> Admitted[ModelT]:
    """The completion routes' checks in their order (key, body, Idempotency-Key, then the body against `model`),
    so a bad key is a 401 before a bad body is a 400. One plain call rather than dependencies: solving them took
    a third of a proxied request's CPU time. Errors propagate to the app's exception handlers as from any route."""
    gw: Gateway = request.app.state.gateway
    headers = request.headers  # the first of repeated headers, as a FastAPI Header() parameter reads it
    principal = await gw.keys.authenticate(headers.get("authorization"))
    body = await read_json_body(request, gw.settings.max_body_bytes)
    idempotency_key = check_idempotency_key(headers.get("idempotency-key"))
    return Admitted(gw, principal, body, validated(model, body), idempotency_key)


# How the completion routes' schema describes the headers admit_completion reads, as FastAPI documents the
# Header() parameters of get_principal and get_idempotency_key above: the schema-driven tests send them.
COMPLETION_HEADER_PARAMETERS: list[dict[str, Any]] = [
    {"name": "authorization", "in": "header", "required": False,
     "schema": {"anyOf": [{"type": "string"}, {"type": "null"}], "title": "Authorization"}},
    {"name": "Idempotency-Key", "in": "header", "required": False,
     "schema": {"anyOf": [{"type": "string"}, {"type": "null"}], "title": "Idempotency-Key",
                "minLength": 1, "maxLength": IDEMPOTENCY_KEY_MAX, "pattern": r"\S"}},
]
