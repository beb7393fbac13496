"""One error body for every failure: ``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)


class AppError(Exception):
    """An error with an HTTP status, a stable machine-readable code and a plain-language message."""

    status_code = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.code
        self.details = details
        self.headers = headers


class BadRequest(AppError):
    status_code = 400
    code = "bad_request"


class Unauthorized(AppError):
    status_code = 401
    code = "unauthorized"

    def __init__(
        self, message: str = "Sign in first: this needs a valid token or API key", **kw: Any
    ) -> None:
        kw.setdefault("headers", {"WWW-Authenticate": "Bearer"})
        super().__init__(message, **kw)


class Forbidden(AppError):
    status_code = 403
    code = "forbidden"


class NotFound(AppError):
    status_code = 404
    code = "not_found"


class Conflict(AppError):
    status_code = 409
    code = "conflict"


class PayloadTooLarge(AppError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(AppError):
    status_code = 415
    code = "unsupported_media_type"


class Unprocessable(AppError):
    status_code = 422
    code = "unprocessable"


class Unavailable(AppError):
    status_code = 503
    code = "unavailable"


class TooManyRequests(AppError):
    status_code = 429
    code = "too_many_requests"


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable, machine-readable reason, e.g. validation_error")
    message: str = Field(description="What went wrong, in plain words")
    details: Any = Field(default=None, description="More about it (e.g. the fields in error), or null")


class ErrorBody(BaseModel):
    """The body of every error answer."""

    error: ErrorDetail


_ERROR_DESCRIPTIONS = {
    400: "Malformed request (e.g. broken JSON) or a value that cannot be used",
    401: "No valid credentials",
    403: "Signed in, but not allowed",
    404: "No such row",
    409: "Conflicts with the current state",
    413: "The body is too large",
    415: "Unsupported content type or encoding",
    422: "Some fields are missing or have the wrong type",
    429: "Too many attempts; retry later",
    503: "Temporarily unavailable; retry later",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries for error answers, all with :class:`ErrorBody`.

    Documenting 422 here also replaces FastAPI's default validation body, which this API never sends.

    >>> sorted(error_responses(401, 422))
    [401, 422]
    """
    return {s: {"model": ErrorBody, "description": _ERROR_DESCRIPTIONS[s]} for s in statuses}


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
}


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    details = []
    for err in exc.errors():
        details.append(
            {
                "location": [str(p) for p in err.get("loc", ())],
                "message": str(err.get("msg", "")),
                "type": str(err.get("type", "")),
            }
        )
    return details


def install_error_handlers(app: FastAPI) -> None:
    """Make every error — ours, FastAPI's, Starlette's, unexpected ones — use the same body."""

    @app.exception_handler(AppError)
    async def _app_error(_request: Request, exc: AppError) -> JSONResponse:
        return JSONResponse(
            error_body(exc.code, exc.message, exc.details), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return JSONResponse(
            error_body(code, message), status_code=exc.status_code, headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        details = _validation_details(exc)
        if any(d["type"] == "json_invalid" for d in details):
            return JSONResponse(
                error_body("malformed_json", "The request body is not valid JSON", details), status_code=400
            )
        return JSONResponse(
            error_body("validation_error", "Some fields are missing or have the wrong type", details),
            status_code=422,
        )

    @app.exception_handler(DataError)
    async def _data_error(request: Request, exc: DataError) -> JSONResponse:
        # A safety net: the database refused a value that validation let through (a number out of
        # range for its column, a NUL character, text too long). That is the request's fault, not ours.
        logger.warning(
            "database refused a value on %s %s: %s",
            request.method,
            request.url.path,
            type(exc.orig).__name__,
        )
        return JSONResponse(
            error_body(
                "invalid_value",
                "A value in the request is out of range or holds characters that cannot be stored",
            ),
            status_code=400,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Imported here: the middleware module imports this one.
        from finsecure.core.middleware import security_headers
        from finsecure.system.outbox import is_db_unavailable

        # Starlette answers unexpected errors from its outermost layer, past SecurityHeadersMiddleware,
        # so this response carries the hardening headers itself.
        headers = {
            name.decode(): value.decode()
            for name, value in security_headers(is_tls=request.url.scheme == "https")
        }
        if is_db_unavailable(exc):  # an outage, not a bug: say so, and when to come back
            logger.warning(
                "database unavailable on %s %s: %s", request.method, request.url.path, type(exc).__name__
            )
            return JSONResponse(
                error_body("database_unavailable", "The database is not answering; retry in a few seconds"),
                status_code=503,
                headers={**headers, "Retry-After": "5"},
            )
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            error_body("internal_error", "Something went wrong on our side; it has been logged"),
            status_code=500,
            headers=headers,
        )
