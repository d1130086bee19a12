"""Request middlewares: request ids in logs, JSON error bodies, request metrics."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from shortdrama_worker import keys
from shortdrama_worker.web.responses import error_response

log = structlog.get_logger("shortdrama_worker.http")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "body_too_large",
    415: "unsupported_media_type",
}
# Headers of an aiohttp HTTP error that say something to the client (Allow on 405).
_KEPT_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bind a request id for every log line of the request; echo it back."""
    # A client's id is echoed only if it is a plain token: anything else could
    # not be written back as a header, or would forge log fields.
    offered = request.headers.get("X-Request-Id", "")
    request_id = offered if _REQUEST_ID.match(offered) else uuid.uuid4().hex
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
        response = error_response(exc.status, _CODES.get(exc.status, "http_error"), message or "")
        for name in _KEPT_HEADERS:
            if name in exc.headers:
                response.headers[name] = exc.headers[name]
        return response
    except Exception:
        log.exception("unhandled_error", path=request.path)
        return error_response(500, "internal_error", "internal error; see the server log")


@web.middleware
async def body_deadline(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A request body must arrive within ``api.body_timeout_s``.

    The body is read here, under the deadline, and cached on the request, so a
    client trickling bytes cannot hold a handler (or shutdown) for long.
    """
    if request.body_exists:
        deadline = request.app[keys.SETTINGS].api.body_timeout_s
        try:
            async with asyncio.timeout(deadline):
                await request.read()
        except TimeoutError:
            message = f"request body not received within {deadline:g} s"
            response = error_response(408, "request_timeout", message)
            response.force_close()  # the rest of that body is not wanted
            return response
    return await handler(request)
