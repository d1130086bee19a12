"""Hostile requests get a clear 4xx JSON error, never a 500 or a stuck connection."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer
from support import ScriptedHandler, eventually, submit

from shortdrama_worker.plugins import HandlerRegistry
from shortdrama_worker.web.auth import digest

SECRET = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
KEY = "sdw_editor_key"


def registry() -> HandlerRegistry:
    return HandlerRegistry.from_classes({"scripted": ScriptedHandler})


async def raw_request(port: int, head: bytes, body: bytes = b"") -> tuple[int, dict[str, str], Any]:
    """Send bytes no well-behaved client would; read one response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + b"\r\n" + body)
        await writer.drain()
        status_line = await reader.readline()
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        payload = await reader.readexactly(int(headers.get("content-length", "0")))
        return int(status_line.split()[1]), headers, payload
    finally:
        writer.close()


@pytest.fixture
async def server(make_settings: Any, start_app: Any) -> Any:
    settings = make_settings(
        auth={"enabled": True, "keys": [{"id": "editor", "sha256": digest(KEY)}]},
        api={"body_timeout_s": 0.5},
    )
    _, client = await start_app(settings, registry())
    return client


def post_head(port: int, *extra: bytes, length: int) -> bytes:
    lines = [
        b"POST /api/v1/scripted/jobs HTTP/1.1",
        f"Host: 127.0.0.1:{port}".encode(),
        b"Content-Type: application/json",
        f"Content-Length: {length}".encode(),
        *extra,
    ]
    return b"\r\n".join(lines) + b"\r\n"


async def test_json_nested_too_deeply_is_a_400_json_error(server: Any) -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    resp = await server.post(
        "/api/v1/scripted/jobs",
        data=body,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    assert resp.status == 400
    assert (await resp.json())["error"] == {
        "code": "malformed_json",
        "message": "request body is nested too deeply",
    }


async def test_undecodable_header_bytes_are_4xx_json_errors(server: Any) -> None:
    port = server.port
    auth = f"Authorization: Bearer {KEY}".encode()
    status, headers, body = await raw_request(
        port, post_head(port, auth, b"Idempotency-Key: fr\xffame\xfe", length=2), b"{}"
    )
    assert status == 422
    assert headers["content-type"].startswith("application/json")
    message = json.loads(body)["error"]["message"]
    assert message == "Idempotency-Key: must be printable ASCII"

    status, headers, body = await raw_request(
        port, post_head(port, b"Authorization: Bearer sdw_\xff\xfe", length=2), b"{}"
    )
    assert status == 401
    assert json.loads(body)["error"]["code"] == "unauthorized"

    status, headers, body = await raw_request(
        port, post_head(port, auth, b"X-Request-Id: a\xffb", length=2), b"{}"
    )
    assert status == 202
    assert headers["x-request-id"].isalnum()


async def test_a_trickling_body_gets_a_408_within_the_deadline(server: Any) -> None:
    port = server.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    auth = f"Authorization: Bearer {KEY}".encode()
    writer.write(post_head(port, auth, length=1000) + b"\r\n" + b'{"a": ')
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), timeout=10)
    writer.close()
    assert b" 408 " in status_line


async def test_405_says_which_methods_are_allowed(server: Any) -> None:
    resp = await server.put("/api/v1/jobs/abc", headers={"Authorization": f"Bearer {KEY}"})
    assert resp.status == 405
    assert set(resp.headers["Allow"].split(",")) >= {"GET", "DELETE"}
    assert (await resp.json())["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "application/xml", "image/png"],
)
async def test_submit_refuses_bodies_that_are_not_json_or_a_form(
    server: Any, content_type: str
) -> None:
    resp = await server.post(
        "/api/v1/scripted/jobs",
        data=b"{}",
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": content_type},
    )
    assert resp.status == 415
    error = (await resp.json())["error"]
    assert error["code"] == "unsupported_media_type"
    assert content_type in error["message"]


async def test_a_form_without_its_boundary_is_a_400_not_a_crash(server: Any) -> None:
    resp = await server.post(
        "/api/v1/scripted/jobs",
        data=b"{}",
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "multipart/form-data"},
    )
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "malformed_form"


async def test_status_urls_never_echo_an_unchecked_host_header(
    make_settings: Any, start_app: Any
) -> None:
    settings = make_settings(api={"allowed_hosts": ["worker.studio.example"]})
    _, client = await start_app(settings, registry())
    resp = await client.post("/api/v1/scripted/jobs", json={}, headers={"Host": "evil.example"})
    assert resp.status == 202
    assert "evil.example" not in resp.headers["Location"]
    assert resp.headers["Location"].startswith(f"http://127.0.0.1:{client.port}/api/v1/jobs/")
    assert "evil.example" not in (await resp.json())["status_url"]
    allowed = await client.post(
        "/api/v1/scripted/jobs", json={}, headers={"Host": "worker.studio.example"}
    )
    assert allowed.headers["Location"].startswith("http://worker.studio.example/api/v1/jobs/")


@pytest.fixture
async def receiver() -> Any:
    received: list[bytes] = []

    async def handle(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    server.received = received  # type: ignore[attr-defined]
    yield server
    await server.close()


async def test_a_delivered_webhook_is_logged_and_its_task_ends_cleanly(
    make_settings: Any, start_app: Any, receiver: Any
) -> None:
    settings = make_settings(webhooks={"secret": SECRET})
    _, client = await start_app(settings, registry())
    loop_errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, ctx: loop_errors.append(ctx))
    with structlog.testing.capture_logs() as logs:
        await submit(client, "scripted", {"callback_url": str(receiver.make_url("/hook"))})
        await eventually(
            lambda: any(e["event"] == "webhook_delivered" for e in logs), what="delivery logged"
        )
    [delivered] = [e for e in logs if e["event"] == "webhook_delivered"]
    assert delivered["attempt"] == 1
    assert delivered["status"] == 204
    assert not [e for e in logs if e.get("log_level") == "error"]
    assert loop_errors == []


@pytest.mark.slow
async def test_slow_request_bodies_do_not_hold_shutdown(make_settings: Any, tmp_path: Any) -> None:
    """SIGTERM with two bodies trickling in: the process exits within the grace
    plus api.shutdown_timeout_s, not aiohttp's 60 s default."""
    import os
    import signal
    import sys

    port = _free_port()
    env = {
        **os.environ,
        "SHORTDRAMA_LOCAL__EMBEDDED_AWS": "true",
        "SHORTDRAMA_API__PORT": str(port),
        "SHORTDRAMA_API__BODY_TIMEOUT_S": "120",  # only the shutdown timeout may end them
        "SHORTDRAMA_API__SHUTDOWN_TIMEOUT_S": "2",
        "SHORTDRAMA_CONSUMER__SHUTDOWN_GRACE_S": "1",
        "SHORTDRAMA_HANDLERS__ALLOW": '["face_mask"]',
        # Results are signed, as on the embedded default, with a development certificate.
        "SHORTDRAMA_PROVENANCE__DEV_CERTIFICATE": "true",
        "SHORTDRAMA_PROVENANCE__DEV_CERTIFICATE_DIR": str(tmp_path / "dev-certificate"),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shortdrama_worker", "serve",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        await eventually(lambda: _listening(port), timeout=60, what="daemon listening")
        writers = []
        for _ in range(2):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(post_head(port, length=10_000) + b"\r\n{")
            await writer.drain()
            writers.append(writer)
        await asyncio.sleep(0.3)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), timeout=45)
        assert proc.returncode == 0
        # Grace 1 s + shutdown timeout 2 s, with room for a slow machine; the
        # unbounded server took 60 s.
        assert time.monotonic() - started < 30
        for writer in writers:
            writer.close()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
