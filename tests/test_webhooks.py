"""Job webhooks: signed per Standard Webhooks, retried, recorded, never aimed inside."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from support import ScriptedHandler, submit, wait_for

from shortdrama_worker.plugins import HandlerRegistry

SECRET_RAW = b"0123456789abcdef0123456789abcdef"
SECRET = "whsec_" + base64.b64encode(SECRET_RAW).decode()


class Receiver:
    """A webhook receiver that fails the first ``fail_first`` deliveries."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.received: list[tuple[dict[str, str], bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.read()))
        if len(self.received) <= self.fail_first:
            return web.Response(status=503)
        return web.Response(status=204)


@pytest.fixture
async def receiver() -> Any:
    recv = Receiver(fail_first=1)
    app = web.Application()
    app.router.add_post("/hook", recv.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    recv.url = str(server.make_url("/hook"))  # type: ignore[attr-defined]
    yield recv
    await server.close()


def verify(headers: dict[str, str], body: bytes) -> bool:
    """What a receiver does, written from the Standard Webhooks spec."""
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(SECRET_RAW, signed, hashlib.sha256).digest()).decode()
    return any(sig.split(",", 1)[1] == expected for sig in headers["webhook-signature"].split(" "))


def app_settings(make_settings: Any, **inputs: Any) -> Any:
    return make_settings(
        webhooks={"secret": SECRET, "backoff_base_s": 0.1},
        inputs={"allow_http": True, "allow_networks": ["127.0.0.0/8"], **inputs},
    )


def registry() -> HandlerRegistry:
    return HandlerRegistry.from_classes({"scripted": ScriptedHandler})


async def wait_deliveries(client: Any, job_id: str, count: int) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        job = await (await client.get(f"/api/v1/jobs/{job_id}")).json()
        if job["webhook"] and len(job["webhook"]["deliveries"]) >= count:
            return dict(job)
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {count} deliveries recorded")


async def test_a_completed_job_is_announced_signed_after_a_retry(
    make_settings: Any, start_app: Any, receiver: Any
) -> None:
    _, client = await start_app(app_settings(make_settings), registry())
    job_id = await submit(client, "scripted", {"callback_url": receiver.url})
    assert (await wait_for(client, job_id))["status"] == "completed"
    job = await wait_deliveries(client, job_id, 2)
    assert [d["status"] for d in job["webhook"]["deliveries"]] == [503, 204]
    headers, body = receiver.received[-1]
    assert verify(headers, body)
    assert headers["webhook-id"] == f"msg_{job_id}_completed"
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 30
    event = json.loads(body)
    assert event["type"] == "job.completed"
    assert event["data"]["job_id"] == job_id
    assert event["data"]["result_url"]
    # A tampered body fails verification: the signature covers it.
    assert not verify(headers, body.replace(b"completed", b"failed"))


async def test_a_failed_job_is_announced_with_its_reason(
    make_settings: Any, start_app: Any, receiver: Any
) -> None:
    receiver.fail_first = 0
    _, client = await start_app(app_settings(make_settings), registry())
    payload = {"permanent": "no face found", "callback_url": receiver.url}
    job_id = await submit(client, "scripted", payload)
    await wait_deliveries(client, job_id, 1)
    event = json.loads(receiver.received[0][1])
    assert event["type"] == "job.failed"
    assert event["data"]["error_message"] == "no face found"


async def test_a_callback_to_an_internal_address_is_refused_at_submit(
    make_settings: Any, start_app: Any, receiver: Any
) -> None:
    settings = make_settings(
        webhooks={"secret": SECRET}, inputs={"allow_http": True, "allow_networks": []}
    )
    _, client = await start_app(settings, registry())
    resp = await client.post("/api/v1/scripted/jobs", json={"callback_url": receiver.url})
    assert resp.status == 422
    error = (await resp.json())["error"]
    assert error["fields"][0]["field"] == "callback_url"
    assert "127.0.0.1 is a loopback address" in error["message"]
    assert receiver.received == []


async def test_a_callback_name_resolving_inside_is_refused_and_not_retried(
    make_settings: Any, start_app: Any, receiver: Any
) -> None:
    settings = make_settings(
        webhooks={"secret": SECRET}, inputs={"allow_http": True, "allow_networks": []}
    )
    _, client = await start_app(settings, registry())
    url = receiver.url.replace("127.0.0.1", "localhost")
    job_id = await submit(client, "scripted", {"callback_url": url})
    job = await wait_deliveries(client, job_id, 1)
    [delivery] = job["webhook"]["deliveries"]
    assert delivery["error"].startswith("refused: ")
    assert "is a loopback address" in delivery["error"]
    assert receiver.received == []


async def test_callback_url_without_a_configured_secret_is_422(
    make_settings: Any, start_app: Any
) -> None:
    _, client = await start_app(make_settings(), registry())
    resp = await client.post("/api/v1/scripted/jobs", json={"callback_url": "https://x.example/h"})
    assert resp.status == 422
    body = await resp.json()
    assert body["error"]["fields"][0]["field"] == "callback_url"
    assert "webhooks are not configured" in body["error"]["message"]


async def test_callback_url_must_be_a_web_url(make_settings: Any, start_app: Any) -> None:
    _, client = await start_app(app_settings(make_settings), registry())
    resp = await client.post("/api/v1/scripted/jobs", json={"callback_url": "file:///etc/passwd"})
    assert resp.status == 422
    assert (await resp.json())["error"]["message"] == "callback_url: must be an https:// URL"
