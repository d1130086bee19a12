"""Input URLs are hostile until proven otherwise: what may be fetched, and how refusals read."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from support import ScriptedHandler, submit, wait_for

from shortdrama_worker.inputs.netguard import AddressPolicy
from shortdrama_worker.plugins import HandlerRegistry


def registry() -> HandlerRegistry:
    return HandlerRegistry.from_classes({"scripted": ScriptedHandler})


@pytest.fixture
async def redirector() -> Any:
    """A server on 127.0.0.1 that redirects elsewhere."""

    async def to_other_loopback(request: web.Request) -> web.Response:
        port = request.url.port
        raise web.HTTPFound(f"http://127.0.0.2:{port}/frame.png")

    async def to_itself(request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    app = web.Application()
    app.router.add_get("/hop", to_other_loopback)
    app.router.add_get("/loop", to_itself)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


async def failed_job(client: Any, url: str) -> dict[str, Any]:
    job = await wait_for(client, await submit(client, "scripted", {"image_url": url}))
    assert job["status"] == "failed", job
    assert job["attempts"] == 1, "a refusal is permanent, never retried"
    return job


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
        ("http://127.0.0.1:9/frame.png", "127.0.0.1 is a loopback address"),
        ("http://[::1]:9/frame.png", "::1 is a loopback address"),
        ("http://10.0.0.8/frame.png", "10.0.0.8 is a private address"),
    ],
)
async def test_internal_address_literals_are_refused_at_submit(
    make_settings: Any, start_app: Any, url: str, reason: str
) -> None:
    settings = make_settings(inputs={"allow_http": True, "allow_networks": []})
    _, client = await start_app(settings, registry())
    resp = await client.post("/api/v1/scripted/jobs", json={"image_url": url})
    assert resp.status == 422
    error = (await resp.json())["error"]
    assert error["fields"][0]["field"] == "image_url"
    assert error["fields"][0]["type"] == "address_refused"
    assert error["message"].startswith("image_url: ")
    assert reason in error["message"]


async def test_a_name_resolving_inside_is_refused_at_run_time(
    make_settings: Any, start_app: Any
) -> None:
    settings = make_settings(inputs={"allow_http": True, "allow_networks": []})
    _, client = await start_app(settings, registry())
    job = await failed_job(client, "http://localhost:9/frame.png")
    assert job["error"]["code"] == "address_refused"
    assert job["error_message"].startswith("image_url: ")
    assert "is a loopback address" in job["error_message"]


async def test_each_redirect_is_checked_again(
    make_settings: Any, start_app: Any, redirector: Any
) -> None:
    settings = make_settings(inputs={"allow_http": True, "allow_networks": ["127.0.0.1/32"]})
    _, client = await start_app(settings, registry())
    job = await failed_job(client, str(redirector.make_url("/hop")))
    assert "127.0.0.2 is a loopback address" in job["error_message"]


async def test_redirects_are_bounded(make_settings: Any, start_app: Any, redirector: Any) -> None:
    settings = make_settings(inputs={"allow_http": True, "max_redirects": 3})
    _, client = await start_app(settings, registry())
    url = str(redirector.make_url("/loop"))
    job = await failed_job(client, url)
    assert f"{url} redirects more than 3 times" in job["error_message"]


async def test_plain_http_is_refused_at_submit_unless_allowed(
    make_settings: Any, start_app: Any
) -> None:
    _, client = await start_app(make_settings(inputs={"allow_http": False}), registry())
    resp = await client.post(
        "/api/v1/scripted/jobs", json={"image_url": "http://cdn.example/a.png"}
    )
    assert resp.status == 422
    assert "image_url: http:// inputs are not allowed" in (await resp.json())["error"]["message"]


async def test_s3_inputs_only_from_configured_buckets(make_settings: Any, start_app: Any) -> None:
    _, client = await start_app(make_settings(), registry())
    resp = await client.post("/api/v1/scripted/jobs", json={"image_url": "s3://payroll/a.png"})
    assert resp.status == 422
    assert "bucket 'payroll' is not one inputs may be read from" in (await resp.text())


def test_ipv4_mapped_ipv6_is_judged_as_ipv4() -> None:
    assert AddressPolicy().refusal("::ffff:127.0.0.1") == "127.0.0.1 is a loopback address"
    assert AddressPolicy().refusal("93.184.216.34") is None
    assert AddressPolicy(["10.0.0.0/8"]).refusal("10.1.2.3") is None
