"""HTTP edge: the one place errors become JSON responses, and admin auth.

Every ``VigilError`` becomes ``{"error": {"code", "message", ...}}`` with its
status (and ``Retry-After`` when it has one); request validation problems
become 400/422 bodies naming the field; anything unexpected becomes a 500
body without a traceback (and a logged one).
"""

from __future__ import annotations

import hmac
import logging
import math
import re
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette._utils import parse_host_header
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from core.errors import Forbidden, TextTooLong, Unauthorized, VigilError

if TYPE_CHECKING:
    from core.config import Settings

log = logging.getLogger(__name__)
FASTAPI_BODY_PARSE_ERROR = "There was an error parsing the body"
NEEDS_TOKEN = (
    "this endpoint needs the admin token: send 'Authorization: Bearer <token>' "
    "(VIGIL_ADMIN_TOKEN, or the file data/admin_token)"
)


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
        if exc.status_code == 400 and message == FASTAPI_BODY_PARSE_ERROR:
            # FastAPI's answer to a body json.loads cannot even decode (not UTF-8).
            code, message = "invalid_json", "the request body is not valid JSON (send UTF-8)"
        elif exc.status_code == 404:
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
        _refused(request.scope, "no token")
        raise Unauthorized(NEEDS_TOKEN)
    if not is_admin_token(scheme, token, expected):
        _refused(request.scope, "wrong token")
        raise Forbidden("the admin token is wrong")


def _refused(scope: Any, why: str) -> None:
    """Counted and logged (rate-limited, the client address, never the token)."""
    client = scope.get("client")
    scope["app"].state.vigil.audit.refused(
        client[0] if client else "unknown", why, scope.get("method", "?"), scope.get("path", "")
    )


def is_admin_token(scheme: str, token: str, expected: str) -> bool:
    """Constant-time comparison of bytes (any header text, also non-ASCII)."""
    given = token.strip().encode("utf-8", "surrogateescape")
    return scheme.lower() == "bearer" and hmac.compare_digest(given, expected.encode("utf-8"))


BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# The one route whose body may carry images or audio (a larger limit, read by the route).
UPLOAD_ROUTE = re.compile(r"^/api/chats/[^/]+/messages$")


class BodyGuard:
    """ASGI middleware for every route that may read a body (any method but
    GET/HEAD/OPTIONS) and everything under ``/api/``: the token is checked and
    the body size bounded *before* anything reads the body.

    FastAPI parses a JSON body before dependencies run, so without this an
    anonymous 300 MB POST is read into memory (past the restart threshold)
    just to be answered 401. Chunked bodies are counted as they arrive. Every
    route that takes a body needs the admin token, so refusing an anonymous
    one here changes no answer but the cost.

    ``POST /api/chats/{id}/messages`` may carry images or audio: its limit is
    :func:`upload_body_bytes`, and its body is passed on unbuffered (counted)
    for the route to read under its upload gate (``core/uploads.py``).
    """

    def __init__(self, app: Any, *, prefix: str = "/api/") -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or (
            scope["method"] in BODYLESS_METHODS and not scope["path"].startswith(self.prefix)
        ):
            await self.app(scope, receive, send)
            return
        runtime = scope["app"].state.vigil
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        scheme, _, token = headers.get("authorization", "").partition(" ")
        problem: VigilError | None = None
        if not headers.get("authorization"):
            problem = Unauthorized(NEEDS_TOKEN)
            _refused(scope, "no token")
        elif not is_admin_token(scheme, token, runtime.admin_token):
            problem = Forbidden("the admin token is wrong")
            _refused(scope, "wrong token")
        is_upload = scope["method"] == "POST" and UPLOAD_ROUTE.match(scope["path"]) is not None
        settings = runtime.settings
        limit = max_body_bytes(settings.max_message_chars)
        if is_upload:
            limit = upload_body_bytes(settings)
        length = headers.get("content-length", "")
        if problem is None and length.isdigit() and int(length) > limit:
            problem = TextTooLong(f"the request body is larger than {limit} bytes", limit=limit)
        if problem is not None:
            await error_response(problem)(scope, receive, send)
            return
        if is_upload:
            # Images or audio: read by the route itself under its upload gate
            # (core/uploads.py), never buffered here; counted as it arrives.
            await self.app(scope, _counted(receive, limit), send)
            return
        body, complete = await _read_body(receive, limit)
        if not complete:
            too_big = TextTooLong(f"the request body is larger than {limit} bytes", limit=limit)
            await error_response(too_big)(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)


def max_body_bytes(max_chars: int) -> int:
    # JSON may escape each character as \uXXXX (6 bytes), plus the envelope.
    return 6 * max_chars + 4096


def upload_body_bytes(settings: Settings) -> int:
    """The body limit of ``POST /api/chats/{id}/messages``: its text plus either
    VIGIL_MAX_IMAGES_PER_MESSAGE images as base64 data URLs (the larger form of
    an image; a multipart file is its raw size) or one VIGIL_MAX_AUDIO_BYTES file."""
    per_image = 4 * math.ceil(settings.max_image_bytes / 3) + 512  # data URL or part headers
    images = settings.max_images_per_message * per_image
    audio = settings.max_audio_bytes + 1024
    return max_body_bytes(settings.max_message_chars) + max(images, audio)


def _counted(receive: Any, limit: int) -> Any:
    """``receive`` that raises TextTooLong (413) once more than ``limit`` bytes came."""
    size = 0

    async def counted() -> Any:
        nonlocal size
        message = await receive()
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > limit:
                raise TextTooLong(f"the request body is larger than {limit} bytes", limit=limit)
        return message

    return counted


async def _read_body(receive: Any, limit: int) -> tuple[bytes, bool]:
    """The whole body if it fits in ``limit`` bytes (chunked bodies included)."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(parts), True  # disconnected: let the app see an empty body
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"", False
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts), True


def _replay(body: bytes, receive: Any) -> Any:
    sent = False

    async def replay() -> Any:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # then disconnects, as the app expects

    return replay


class TrustedHosts(TrustedHostMiddleware):
    """Starlette's Host check (``VIGIL_ALLOWED_HOSTS``), answering 400 in our JSON shape.

    A page on another site can point its own DNS name at this server (DNS
    rebinding) and read the open endpoints; its requests carry that name in
    ``Host`` and are refused. IPv6 hosts match with or without brackets.
    """

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.allow_any or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        raw = ""
        for key, value in scope["headers"]:
            if key == b"host":
                raw = value.decode("latin-1")
                break
        parsed = parse_host_header(raw) if raw else None
        host = parsed.host.lower().strip("[]") if parsed is not None else ""
        if host and any(
            host == pattern or (pattern.startswith("*") and host.endswith(pattern[1:]))
            for pattern in self.allowed_hosts
        ):
            await self.app(scope, receive, send)
            return
        body = {
            "code": "invalid_host",
            "message": f"Host {raw!r} is not served here; add it to VIGIL_ALLOWED_HOSTS",
        }
        await JSONResponse({"error": body}, status_code=400)(scope, receive, send)


def trusted_host_patterns(hosts: list[str]) -> list[str]:
    return [host.strip().lower().strip("[]") for host in hosts if host.strip()]
