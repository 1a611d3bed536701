"""The one error mapper: every failure leaves the gateway as OpenAI's {"error": {...}} body.

The official `openai` client picks its exception class from the status code (400 BadRequestError,
401 AuthenticationError, 403 PermissionDeniedError, 404 NotFoundError, 5xx InternalServerError), so the status
codes here are the contract; the body carries the human message and the offending field in `param`.
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.protocol import ErrorDetail, ErrorResponse

log = logging.getLogger("tuneloop.gateway")
ModelT = TypeVar("ModelT", bound=BaseModel)


class GatewayError(Exception):
    """An error with its HTTP status and OpenAI error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.detail = ErrorDetail(message=message, type=type, param=param, code=code)
        self.headers = headers or {}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> GatewayError:
    return GatewayError(400, message, param=param, code=code)


def unauthorized(message: str = "Invalid or missing API key.") -> GatewayError:
    return GatewayError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def forbidden(message: str) -> GatewayError:
    return GatewayError(403, message, type="permission_denied", code="insufficient_scope")


def not_found(message: str, param: str | None = None, code: str = "not_found") -> GatewayError:
    return GatewayError(404, message, param=param, code=code)


def too_large(limit: int) -> GatewayError:
    return GatewayError(413, f"Request body exceeds the limit of {limit} bytes.", code="request_too_large")


def bad_gateway(message: str, code: str = "upstream_error") -> GatewayError:
    return GatewayError(502, message, type="api_error", code=code)


def gateway_timeout(message: str) -> GatewayError:
    return GatewayError(504, message, type="api_error", code="upstream_timeout")


def store_unavailable() -> GatewayError:
    return GatewayError(
        503,
        "The interaction store is unavailable; the request was not served so that nothing goes unlogged.",
        type="api_error",
        code="store_unavailable",
        headers={"Retry-After": "1"},
    )


IDEMPOTENCY_HEADER = "Idempotency-Key"


def invalid_idempotency_key(message: str) -> GatewayError:
    return bad_request(message, param=IDEMPOTENCY_HEADER, code="invalid_idempotency_key")


def idempotency_key_reused() -> GatewayError:
    return GatewayError(
        422, "This Idempotency-Key was already used with a different request (body or endpoint); use a new key "
        "for a new request.", param=IDEMPOTENCY_HEADER, code="idempotency_key_reused")


def idempotency_in_progress() -> GatewayError:
    return GatewayError(
        409, "A request with this Idempotency-Key is being answered now; retry after it finishes to get its "
        "answer.", param=IDEMPOTENCY_HEADER, code="idempotency_key_in_progress", headers={"Retry-After": "1"})


def row_rejected(reason: str) -> GatewayError:
    return bad_request(f"The request could not be recorded, so it was not answered: {reason}"[:1000],
                       code="unrecordable_request")


def validation_error(error: ValidationError | RequestValidationError, body: Any = None) -> GatewayError:
    """Name the first offending field as the client wrote it, the way OpenAI's `param` does (messages.0.role),
    without pydantic's union-member steps (messages.0.content.str)."""
    first = error.errors()[0]
    location = [part for part in first.get("loc", ()) if part != "body"]
    param = ".".join(str(part) for part in client_path(location, body)) or None
    message = first.get("msg", "Invalid request.")
    return bad_request(f"{param}: {message}" if param else message, param=param, code="invalid_value")


def validated(model: type[ModelT], body: dict[str, Any]) -> ModelT:
    """`body` as `model`; a validation error names the field as the client wrote it."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc, body) from None


def client_path(location: list[Any], body: Any) -> list[Any]:
    """The steps of a pydantic error location that exist in the client's JSON, and a missing field's name."""
    path: list[Any] = []
    current = body
    for part in location:
        present = isinstance(current, dict) and part in current
        indexed = isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current)
        if present or indexed:
            path.append(part)
            current = current[part]
        elif isinstance(current, dict) and isinstance(part, str) and not _is_type_step(part):
            path.append(part)  # a required field the client left out
            break
        elif body is None:
            path.append(part)  # no body to check against: keep pydantic's location
    return path


def _is_type_step(part: str) -> bool:
    return "[" in part or part in {"str", "int", "float", "bool", "list", "dict", "none", "json-or-python"}


def error_body(detail: ErrorDetail) -> bytes:
    return orjson.dumps(ErrorResponse(error=detail).model_dump())


def error_response(error: GatewayError, extra_headers: dict[str, str] | None = None) -> Response:
    headers = {**error.headers, **(extra_headers or {})}
    return Response(error_body(error.detail), status_code=error.status, media_type="application/json",
                    headers=headers)


def sse_error_event(detail: ErrorDetail) -> bytes:
    """The error chunk a stream ends with when its upstream fails mid-way (then `data: [DONE]`)."""
    return b"data: " + error_body(detail) + b"\n\n"


def install_error_handlers(app: FastAPI) -> None:
    async def on_gateway_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, GatewayError)
        return error_response(exc, _request_id_header(request))

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError | ValidationError)
        return error_response(validation_error(exc, getattr(exc, "body", None)), _request_id_header(request))

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        codes: dict[int, Any] = {404: "not_found", 405: "method_not_allowed"}
        error = GatewayError(exc.status_code, str(exc.detail), code=codes.get(exc.status_code))
        return error_response(error, _request_id_header(request))

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        error = GatewayError(500, "Internal error in the gateway.", type="server_error", code="internal_error")
        return error_response(error, _request_id_header(request))

    app.add_exception_handler(GatewayError, on_gateway_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(ValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)


def _request_id_header(request: Request) -> dict[str, str]:
    request_id = getattr(request.state, "request_id", None)
    return {"x-request-id": request_id} if request_id else {}
