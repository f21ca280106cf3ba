"""OpenAI-format errors for every failure the server reports, FastAPI's own 404/405/422 included.

Body: `{"error": {"message", "type", "param", "code"}}`. Messages are written here or come from `MedGemmaError`s,
which never quote DICOM header values; unexpected exceptions become a bare "internal error" (logged by type only).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import MedGemmaError

log = logging.getLogger("medgemma_toolkit.serve")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
    504: "timeout_error",
}


class APIError(Exception):
    """An error raised inside the server with its HTTP status; turned into OpenAI's error JSON."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, " ".join(message.split()), code, param
        self.headers = headers or {}


def error_body(status: int, message: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {
        "error": {"message": message, "type": _TYPES.get(status, "invalid_request_error"), "param": param, "code": code}
    }


def error_response(
    status: int, message: str, code: str | None = None, param: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(status, message, code, param), status_code=status, headers=headers)


def from_exception(exc: BaseException) -> APIError:
    """Map any exception to the `APIError` a client should see."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, MedGemmaError):
        return APIError(exc.http_status, str(exc), exc.code if exc.code != "invalid_request_error" else None)
    log.error("internal error: %s", type(exc).__name__)  # the type only: messages may quote inputs
    return APIError(500, "internal server error", "internal_error")


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errs = exc.errors()
    if not errs:
        return "invalid request", None
    e = errs[0]
    loc = [str(x) for x in e.get("loc", ()) if x != "body"]
    param = ".".join(loc) or None
    return (f"{param}: {e.get('msg', 'invalid value')}" if param else str(e.get("msg", "invalid request"))), param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.code, exc.param, exc.headers)

    @app.exception_handler(MedGemmaError)
    async def _mg(_: Request, exc: MedGemmaError) -> JSONResponse:
        e = from_exception(exc)
        return error_response(e.status, e.message, e.code, e.param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        messages = {404: "no such endpoint", 405: "method not allowed for this endpoint"}
        msg = messages.get(exc.status_code) or str(exc.detail)
        return error_response(exc.status_code, msg, None, None, dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        msg, param = _validation_message(exc)
        return error_response(400, msg, "invalid_value", param)

    @app.exception_handler(Exception)
    async def _any(_: Request, exc: Exception) -> JSONResponse:
        e = from_exception(exc)
        return error_response(e.status, e.message, e.code)
