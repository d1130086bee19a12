"""CORS as a browser exercises it: preflights, then the actual request, for allowed and
refused origins."""

from __future__ import annotations

from typing import Any

import pytest
from support import ScriptedHandler

from shortdrama_worker.plugins import HandlerRegistry
from shortdrama_worker.settings import ConfigError
from shortdrama_worker.web.auth import digest

APP = "https://editor.example.com"
EVIL = "https://evil.example.net"
KEY = "sdw_browser_key"


def registry() -> HandlerRegistry:
    return HandlerRegistry.from_classes({"scripted": ScriptedHandler})


@pytest.fixture
async def api(make_settings: Any, start_app: Any) -> Any:
    settings = make_settings(
        cors={"allow_origins": [APP]},
        auth={"enabled": True, "keys": [{"id": "browser", "sha256": digest(KEY)}]},
    )
    _, client = await start_app(settings, registry())
    return client


def preflight(origin: str, method: str = "POST", headers: str = "authorization, content-type"):
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers,
    }


def vary(resp: Any) -> set[str]:
    return {v.strip().lower() for v in resp.headers.get("Vary", "").split(",")}


async def test_preflight_from_an_allowed_origin_is_answered_without_a_key(api: Any) -> None:
    for path, method in (
        ("/api/v1/scripted/jobs", "POST"),
        ("/api/v1/jobs/0d9c7f5e-0000-4000-8000-000000000000", "DELETE"),
        ("/api/v1/jobs", "GET"),
    ):
        resp = await api.options(
            path, headers=preflight(APP, method, "Authorization, Content-Type, Idempotency-Key")
        )
        assert resp.status == 204, (path, await resp.text())
        assert resp.headers["Access-Control-Allow-Origin"] == APP
        assert method in resp.headers["Access-Control-Allow-Methods"]
        allowed = resp.headers["Access-Control-Allow-Headers"].lower()
        assert {"authorization", "content-type", "idempotency-key"} <= {
            h.strip() for h in allowed.split(",")
        }
        assert int(resp.headers["Access-Control-Max-Age"]) > 0
        assert "origin" in vary(resp)


async def test_the_actual_request_exposes_the_headers_a_client_reads(api: Any) -> None:
    resp = await api.post(
        "/api/v1/scripted/jobs",
        json={},
        headers={"Origin": APP, "Authorization": f"Bearer {KEY}", "Idempotency-Key": "one"},
    )
    assert resp.status == 202
    assert resp.headers["Access-Control-Allow-Origin"] == APP
    exposed = {h.strip() for h in resp.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"Location", "Idempotent-Replayed", "Retry-After", "Preference-Applied"} <= exposed
    assert "origin" in vary(resp)
    # An error answer carries them too, so the browser app can read why.
    denied = await api.get("/api/v1/jobs", headers={"Origin": APP})
    assert denied.status == 401
    assert denied.headers["Access-Control-Allow-Origin"] == APP


async def test_a_refused_origin_gets_no_cors_headers(api: Any) -> None:
    resp = await api.options("/api/v1/scripted/jobs", headers=preflight(EVIL))
    assert resp.status == 403
    assert "Access-Control-Allow-Origin" not in resp.headers
    assert "origin" in vary(resp)
    assert EVIL in (await resp.json())["error"]["message"]
    actual = await api.post(
        "/api/v1/scripted/jobs",
        json={},
        headers={"Origin": EVIL, "Authorization": f"Bearer {KEY}"},
    )
    # The server still answers (CORS is the browser's rule); the browser withholds it.
    assert "Access-Control-Allow-Origin" not in actual.headers
    assert "origin" in vary(actual)


async def test_a_method_or_header_outside_the_configuration_is_refused(api: Any) -> None:
    resp = await api.options("/api/v1/scripted/jobs", headers=preflight(APP, "PUT"))
    assert resp.status == 403
    resp = await api.options(
        "/api/v1/scripted/jobs", headers=preflight(APP, "POST", "x-custom-thing")
    )
    assert resp.status == 403
    assert "x-custom-thing" in (await resp.json())["error"]["message"]


async def test_nothing_is_allowed_by_default(make_settings: Any, start_app: Any) -> None:
    _, client = await start_app(make_settings(), registry())
    resp = await client.options("/api/v1/scripted/jobs", headers=preflight(APP))
    assert resp.status == 403
    assert "Access-Control-Allow-Origin" not in resp.headers
    actual = await client.post("/api/v1/scripted/jobs", json={}, headers={"Origin": APP})
    assert actual.status == 202
    assert "Access-Control-Allow-Origin" not in actual.headers


def test_an_origin_with_a_path_is_a_configuration_error(make_settings: Any) -> None:
    with pytest.raises(ConfigError, match=r"cors\.allow_origins"):
        make_settings(cors={"allow_origins": ["https://app.example.com/path"]})
