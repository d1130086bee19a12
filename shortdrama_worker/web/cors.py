"""CORS: browser apps on other origins may call the API, as ``[cors]`` allows.

Two parts, because they act at different moments:

* a middleware answers preflights (``OPTIONS`` with
  ``Access-Control-Request-Method``) for every path, before authentication —
  a browser never sends the key on a preflight — and before routing decides
  the method is not allowed;
* an ``on_response_prepare`` hook adds the headers to every actual answer,
  including error answers, streams (the event stream prepares its own
  response) and exceptions turned into responses at the top.

A small module rather than ``aiohttp-cors``: that package configures CORS
per route object, which misses routes added later and the 405 path, and it
has no notion of "nothing allowed by default".
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web

from shortdrama_worker import keys
from shortdrama_worker.edge_settings import CorsSettings
from shortdrama_worker.web.responses import error_response

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Caches must keep one answer per origin (and per preflight question).
_VARY_PREFLIGHT = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"


def origin_allowed(cors: CorsSettings, origin: str) -> bool:
    return "*" in cors.allow_origins or origin.rstrip("/").lower() in cors.allow_origins


def _is_preflight(request: web.Request) -> bool:
    return (
        request.method == hdrs.METH_OPTIONS
        and hdrs.ORIGIN in request.headers
        and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers
    )


@web.middleware
async def preflight(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer CORS preflights for every route; pass everything else on."""
    if not _is_preflight(request):
        return await handler(request)
    cors = request.app[keys.SETTINGS].cors
    origin = request.headers[hdrs.ORIGIN]
    method = request.headers[hdrs.ACCESS_CONTROL_REQUEST_METHOD].upper()
    asked = [
        h.strip()
        for h in request.headers.get(hdrs.ACCESS_CONTROL_REQUEST_HEADERS, "").split(",")
        if h.strip()
    ]
    allowed_headers = {h.lower() for h in cors.allow_headers}
    problem = None
    if not origin_allowed(cors, origin):
        problem = f"origin {origin} may not call this API (cors.allow_origins)"
    elif method not in cors.allow_methods:
        problem = f"method {method} is not allowed cross-origin (cors.allow_methods)"
    elif refused := [h for h in asked if h.lower() not in allowed_headers]:
        problem = f"header(s) {', '.join(refused)} not allowed cross-origin (cors.allow_headers)"
    if problem is not None:
        # No Access-Control-Allow-* headers: the browser refuses the request.
        response = error_response(403, "cors_refused", problem)
        response.headers[hdrs.VARY] = _VARY_PREFLIGHT
        return response
    headers = {
        hdrs.ACCESS_CONTROL_ALLOW_ORIGIN: origin,
        hdrs.ACCESS_CONTROL_ALLOW_METHODS: ", ".join(cors.allow_methods),
        hdrs.ACCESS_CONTROL_ALLOW_HEADERS: ", ".join(cors.allow_headers),
        hdrs.ACCESS_CONTROL_MAX_AGE: str(cors.max_age_s),
        hdrs.VARY: _VARY_PREFLIGHT,
    }
    if cors.allow_credentials:
        headers[hdrs.ACCESS_CONTROL_ALLOW_CREDENTIALS] = "true"
    return web.Response(status=204, headers=headers)


async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: the CORS headers of an actual (non-preflight) answer."""
    cors = request.app[keys.SETTINGS].cors
    if not cors.allow_origins or _is_preflight(request):
        return
    _vary_origin(response)
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is None or not origin_allowed(cors, origin):
        return
    # The origin itself, never "*": the answer differs per origin (Vary says so),
    # and credentials would forbid "*" anyway.
    response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
    if cors.expose_headers:
        response.headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = ", ".join(cors.expose_headers)
    if cors.allow_credentials:
        response.headers[hdrs.ACCESS_CONTROL_ALLOW_CREDENTIALS] = "true"


def _vary_origin(response: web.StreamResponse) -> None:
    current = response.headers.get(hdrs.VARY, "")
    names = [v.strip() for v in current.split(",") if v.strip()]
    if "origin" not in {n.lower() for n in names}:
        response.headers[hdrs.VARY] = ", ".join([*names, "Origin"])


def setup(app: web.Application) -> None:
    """Install the response hook (the preflight middleware is in ``create_app``'s list)."""
    app.on_response_prepare.append(add_headers)
