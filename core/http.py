"""HTTP edge: the one place errors become JSON responses, and admin auth.

Every ``VigilError`` becomes ``{"error": {"code", "message", ...}}`` with its
status (and ``Retry-After`` when it has one); request validation problems
become 400/422 bodies naming the field; anything unexpected becomes a 500
body without a traceback (and a logged one).
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import Forbidden, Unauthorized, VigilError

log = logging.getLogger(__name__)


def error_response(error: VigilError) -> JSONResponse:
    headers = {}
    retry_after = error.fields.get("retry_after")
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, round(float(retry_after))))
    if isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse({"error": error.to_dict()}, status_code=error.status, headers=headers)


def _validation_body(exc: RequestValidationError) -> tuple[int, dict[str, Any]]:
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body",)]
    kind = str(first.get("type", ""))
    if kind == "json_invalid":
        return 400, {
            "code": "invalid_json",
            "message": "the request body is not valid JSON",
        }
    where = ".".join(loc[1:] if loc and loc[0] in ("path", "query", "header") else loc)
    message = str(first.get("msg", "invalid request"))
    if kind == "missing":
        message = "is required"
    elif kind in ("model_attributes_type", "dict_type"):
        message = "must be a JSON object (send Content-Type: application/json)"
    elif kind == "extra_forbidden":
        message = "is not a known field"
    return 422, {
        "code": "invalid_request",
        "message": f"{where or 'body'}: {message}",
        "field": where or "body",
    }


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(VigilError)
    async def _vigil(request: Request, exc: VigilError) -> JSONResponse:
        if exc.status >= 500:
            log.warning("%s %s -> %s: %s", request.method, request.url.path, exc.code, exc.message)
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, body = _validation_body(exc)
        return JSONResponse({"error": body}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"no such endpoint: {request.method} {request.url.path}"
        return JSONResponse(
            {"error": {"code": code, "message": message}},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(OverflowError)
    async def _overflow(request: Request, exc: OverflowError) -> JSONResponse:
        # A number too large for SQLite's 64-bit integers slipped past a route's bounds.
        body = {"code": "number_too_large", "message": "a number in the request is too large"}
        return JSONResponse({"error": body}, status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            {"error": {"code": "internal_error", "message": "internal error; see logs/system.log"}},
            status_code=500,
        )


def check_admin(request: Request) -> None:
    """FastAPI dependency: ``Authorization: Bearer <VIGIL_ADMIN_TOKEN>``."""
    expected: str = request.app.state.vigil.admin_token
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise Unauthorized(
            "this endpoint needs the admin token: send 'Authorization: Bearer <token>' "
            "(VIGIL_ADMIN_TOKEN, or the file data/admin_token)"
        )
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip(), expected):
        raise Forbidden("the admin token is wrong")
