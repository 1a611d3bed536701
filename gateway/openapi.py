"""What the gateway's OpenAPI schema says beyond what FastAPI infers from the route signatures.

The completion and feedback routes read their body through `JsonBodyDep` (to enforce the size limit while
reading), so FastAPI sees no body parameter; `json_request_body` documents it from the same pydantic model the
route validates with. Every error leaves the gateway as OpenAI's `{"error": {...}}` body (gateway.errors), never as
FastAPI's 422 `HTTPValidationError`; `error_responses` documents that, status by status.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel

from gateway.protocol import ErrorResponse

ERROR_DESCRIPTIONS: dict[int | str, str] = {
    400: "The request is invalid: the body is not a JSON object, or a field is wrong (`param` names it).",
    401: "The API key is missing, unknown or revoked.",
    403: "The API key may not do this (an admin key is needed, or the key does not own the resource).",
    404: "No such model, response or interaction (`param` names the field).",
    409: "A request with this Idempotency-Key is being answered now; retry after `Retry-After`.",
    413: "The request body exceeds the gateway's size limit.",
    422: "This Idempotency-Key was already used with a different request.",
    429: "Too many requests: the key's rpm or tpm limit is reached (retry after `Retry-After`), or the upstream's "
         "own 429 is passed on.",
    502: "The upstream failed, broke off, answered invalid JSON, or no replica accepted the connection.",
    503: "The interaction store is unavailable; the request was not served (retry after `Retry-After`).",
    504: "The upstream sent no response, or did not finish, in time.",
    # FastAPI documents a 422 HTTPValidationError on every route with parameters unless a 422, 4XX or default
    # response is given; the gateway never sends that body (its validation errors are 400 in the shape above),
    # and it passes the upstream's own 4xx statuses on.
    "4XX": "Any other client error, in the same OpenAI error shape (the upstream's own 4xx is passed on).",
}

# One server-sent event, as FastAPI documents `text/event-stream` (fastapi.sse._SSE_EVENT_SCHEMA): the data of a
# completion stream is an OpenAI chunk object as JSON, an `{"error": {...}}` object when the upstream failed
# mid-way, and finally the literal `[DONE]`.
SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {"type": "string", "description": "A chunk object as JSON, an error object, or `[DONE]`."},
        "event": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer", "minimum": 0},
    },
}


def error_responses(*statuses: int | str) -> dict[int | str, dict[str, Any]]:
    """The `responses=` entries for these error statuses, each with the ErrorResponse body."""
    return {status: {"model": ErrorResponse, "description": ERROR_DESCRIPTIONS[status]} for status in statuses}


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its `$defs` inlined, so it can sit inside an operation on its own."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                target = copy.deepcopy(defs[ref.removeprefix("#/$defs/")])
                siblings = {key: value for key, value in node.items() if key != "$ref"}
                return resolve({**target, **siblings})
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return resolve(schema)


def json_request_body(model: type[BaseModel], description: str | None = None) -> dict[str, Any]:
    """`openapi_extra=` for a route that reads its JSON body itself and validates it with `model`."""
    body: dict[str, Any] = {"required": True, "content": {"application/json": {"schema": inline_schema(model)}}}
    if description:
        body["description"] = description
    return {"requestBody": body}


def completion_response(object_name: str, description: str) -> dict[int | str, dict[str, Any]]:
    """The 200 of a completion route: the upstream's completion object as it answered it, or an SSE stream.

    Documented loosely on purpose: the gateway relays the upstream's body unchanged (or replays a stored one for
    an Idempotency-Key), so only the fields every OpenAI-compatible server sends are required, and `object` is the
    one value OpenAI's API gives it for this endpoint.
    """
    completion = {
        "type": "object",
        "description": f"OpenAI's `{object_name}` object, as the upstream answered it.",
        "required": ["id", "object", "created", "model", "choices"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": object_name},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {"type": "array", "items": {"type": "object"}},
            "usage": {"anyOf": [{"type": "object"}, {"type": "null"}]},
        },
        "additionalProperties": True,
    }
    return {
        200: {
            "description": description,
            "content": {
                "application/json": {"schema": completion},
                "text/event-stream": {"itemSchema": SSE_EVENT_SCHEMA},
            },
        }
    }
