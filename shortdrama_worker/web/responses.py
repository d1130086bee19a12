"""The JSON error body every API error shares: ``{"error": {"code", "message", ...}}``."""

from __future__ import annotations

from typing import Any

from aiohttp import web


def error_response(status: int, code: str, message: str, **extra: Any) -> web.Response:
    body = {"error": {"code": code, "message": message, **extra}}
    return web.json_response(body, status=status)
