"""Request middlewares: request ids in logs, JSON error bodies, request metrics."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from shortdrama_worker import keys
from shortdrama_worker.responses import error_response

log = structlog.get_logger("shortdrama_worker.http")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bind a request id for every log line of the request; echo it back."""
    request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    started = time.monotonic()
    response = await handler(request)
    if not response.prepared:  # a stream has sent its headers already
        response.headers["X-Request-Id"] = request_id
    route = request.match_info.route.resource
    template = route.canonical if route is not None else "(unmatched)"
    elapsed = time.monotonic() - started
    request.app[keys.METRICS].http_requests.labels(template, f"{response.status // 100}xx").observe(
        elapsed
    )
    # One structured access line per request (aiohttp's own access log is off).
    log.info(
        "http_request",
        method=request.method,
        path=request.path,
        route=template,
        status=response.status,
        duration_ms=round(elapsed * 1000, 1),
        bytes=response.body_length,
        remote=request.remote,
    )
    return response


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as JSON with a code and a message naming the problem."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        message = exc.text or exc.reason
        if exc.status == 413:
            limit = request.app[keys.SETTINGS].api.max_body_bytes
            message = f"request body larger than {limit} bytes"
        return error_response(exc.status, _CODES.get(exc.status, "http_error"), message or "")
    except Exception:
        log.exception("unhandled_error", path=request.path)
        return error_response(500, "internal_error", "internal error; see the server log")
