"""The job console at ``/`` and the interactive API docs at ``/docs``.

Both are static files shipped in packages — the console in ours
(``shortdrama_worker/static``), Swagger UI in the ``swagger-ui-bundle``
distribution — so nothing is built and nothing is fetched from a CDN. The
console talks to the same JSON API as any client; with auth on it sends the
key the user typed in an ``Authorization`` header, never in a URL.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).resolve().parent.parent / "static"

_DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>shortdrama-worker API</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css">
<style>body{margin:0}</style></head>
<body><div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/static/docs.js"></script>
</body></html>
"""


def _swagger_dir() -> Path | None:
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    return Path(swagger_ui_path)


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def docs(request: web.Request) -> web.Response:
    if _swagger_dir() is None:
        raise web.HTTPNotFound(text="API docs need the swagger-ui-bundle package")
    return web.Response(text=_DOCS_PAGE, content_type="text/html")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_static("/static/", STATIC, append_version=False)
    app.router.add_get("/docs", docs)
    swagger = _swagger_dir()
    if swagger is not None:
        app.router.add_static("/docs/assets/", swagger)
