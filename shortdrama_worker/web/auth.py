"""API keys: ``Authorization: Bearer <key>``, stored as SHA-256 digests in config.

Keys are random 256-bit tokens (``shortdrama-worker keygen``), so a plain
SHA-256 is enough to make a leaked config useless without slowing every
request the way a password hash would. Each key names the kinds it may
submit and whether it may read other keys' jobs.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable

from aiohttp import web

from shortdrama_worker import keys
from shortdrama_worker.settings import ApiKeySettings
from shortdrama_worker.web.responses import error_response

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REQUEST_KEY = web.RequestKey("api_key", ApiKeySettings)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """A fresh key and the digest to put in config."""
    key = "sdw_" + secrets.token_urlsafe(32)
    return key, digest(key)


def find_key(presented: str, configured: list[ApiKeySettings]) -> ApiKeySettings | None:
    if not presented.isascii():
        # Keys are ASCII; other bytes arrive as undecodable text and are no key.
        return None
    wanted = digest(presented)
    found = None
    for candidate in configured:
        # Compare with every key, in constant time, so timing tells nothing.
        if hmac.compare_digest(wanted, candidate.sha256.lower()):
            found = candidate
    return found


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """401 for a missing or unknown key on protected paths; the key rides on the request."""
    auth = request.app[keys.SETTINGS].auth
    if not auth.enabled or not _protected(request.path, auth.public_health, auth.public_metrics):
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    key = find_key(token.strip(), auth.keys) if scheme.lower() == "bearer" and token else None
    if key is None:
        response = error_response(
            401,
            "unauthorized",
            "missing or unknown API key; send Authorization: Bearer <key>"
            if header
            else "Authorization: Bearer <key> header required",
        )
        response.headers["WWW-Authenticate"] = 'Bearer realm="shortdrama-worker"'
        return response
    request[REQUEST_KEY] = key
    return await handler(request)


def _protected(path: str, public_health: bool, public_metrics: bool) -> bool:
    if path.startswith("/api/"):
        return True
    if path == "/health":
        return not public_health
    if path == "/metrics":
        return not public_metrics
    return False  # /ready (probes) and /openapi.json stay public
