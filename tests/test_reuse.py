"""Paying once for a repeated request: an identical job is answered from the earlier result.

Identical means the same kind, parameters and input *content*; a changed byte
runs again, and one key never receives another key's result unless the
operator allows sharing.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from PIL import Image
from support import ScriptedHandler, submit, wait_for
from test_face_mask import SAMPLE, data_uri

from shortdrama_worker import keys
from shortdrama_worker.contract import JobContext
from shortdrama_worker.handlers.face_mask import FaceMaskHandler, FaceMaskInput
from shortdrama_worker.plugins import HandlerRegistry
from shortdrama_worker.web.auth import digest

EDITOR, PARTNER = "sdw_editor_key", "sdw_partner_key"


class CountingFaceMask(FaceMaskHandler):
    """face_mask that records every run, so a test can tell a reuse from a run."""

    runs: list[str]

    async def run(self, params: FaceMaskInput, ctx: JobContext) -> dict[str, Any]:
        self.runs.append(ctx.job_id)
        return await super().run(params, ctx)

    async def startup(self) -> None:
        self.runs = []
        await super().startup()


def registry() -> HandlerRegistry:
    return HandlerRegistry.from_classes(
        {"face_mask": CountingFaceMask, "scripted": ScriptedHandler}
    )


def runs(app: web.Application) -> list[str]:
    handler = app[keys.HANDLERS]["face_mask"]
    assert isinstance(handler, CountingFaceMask)
    return handler.runs


def sample_uri(change_a_pixel: bool = False) -> str:
    image = Image.open(SAMPLE).convert("RGB")
    if change_a_pixel:
        r, g, b = image.getpixel((0, 0))  # type: ignore[misc]
        image.putpixel((0, 0), (r ^ 1, g, b))
    return data_uri(image)


async def test_a_repeated_face_mask_is_answered_from_the_first_result(
    make_settings: Any, start_app: Any
) -> None:
    app, client = await start_app(make_settings(), registry())
    first = await wait_for(client, await submit(client, "face-mask", {"image_url": sample_uri()}))
    assert first["status"] == "completed" and first["reused_from"] is None
    # Sent again: the data: URI is staged anew under another key, same bytes.
    again = await wait_for(client, await submit(client, "face-mask", {"image_url": sample_uri()}))
    assert again["status"] == "completed"
    assert again["reused_from"] == first["job_id"]
    assert runs(app) == [first["job_id"]], "the handler ran once"
    assert again["result"]["face_box"] == first["result"]["face_box"]
    assert urlsplit(again["result_url"]).path == urlsplit(first["result_url"]).path
    assert again["cost"]["total"] == 0
    metrics = app[keys.METRICS]
    assert metrics.jobs_reused.labels("face_mask")._value.get() == 1


async def test_a_changed_byte_of_input_runs_again(make_settings: Any, start_app: Any) -> None:
    app, client = await start_app(make_settings(), registry())
    first = await wait_for(client, await submit(client, "face-mask", {"image_url": sample_uri()}))
    changed = await wait_for(
        client, await submit(client, "face-mask", {"image_url": sample_uri(change_a_pixel=True)})
    )
    assert changed["reused_from"] is None
    # Other parameters count too.
    other = await wait_for(
        client, await submit(client, "face-mask", {"image_url": sample_uri(), "face_index": 0})
    )
    assert other["reused_from"] == first["job_id"], "a default spelt out is the same request"
    assert runs(app) == [first["job_id"], changed["job_id"]]


async def test_reuse_false_runs_even_a_deterministic_kind(
    make_settings: Any, start_app: Any
) -> None:
    app, client = await start_app(make_settings(), registry())
    await wait_for(client, await submit(client, "face-mask", {"image_url": sample_uri()}))
    fresh = await wait_for(
        client, await submit(client, "face-mask", {"image_url": sample_uri(), "reuse": False})
    )
    assert fresh["reused_from"] is None
    assert len(runs(app)) == 2
    bad = await client.post("/api/v1/face-mask/jobs", json={"image_url": "x", "reuse": "yes"})
    assert bad.status == 422
    assert (await bad.json())["error"]["fields"][0]["field"] == "reuse"


async def test_a_client_may_ask_for_reuse_on_any_kind(make_settings: Any, start_app: Any) -> None:
    app, client = await start_app(make_settings(), registry())
    scripted = app[keys.HANDLERS]["scripted"]
    assert isinstance(scripted, ScriptedHandler)
    first = await wait_for(client, await submit(client, "scripted", {"reuse": True}))
    plain = await wait_for(client, await submit(client, "scripted", {}))
    asked = await wait_for(client, await submit(client, "scripted", {"reuse": True}))
    assert plain["reused_from"] is None, "not deterministic: runs unless asked"
    assert asked["reused_from"] == first["job_id"]
    assert len(scripted.runs) == 2


@pytest.fixture
async def image_server() -> AsyncIterator[str]:
    """Serves the sample frame at any path, as a CDN with signed URLs would."""
    png = io.BytesIO()
    Image.open(SAMPLE).convert("RGB").save(png, format="PNG")

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=png.getvalue(), content_type="image/png")

    app = web.Application()
    app.router.add_get("/{tail:.*}", serve)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("/"))
    await server.close()


async def test_urls_are_compared_by_content_not_by_address(
    make_settings: Any, start_app: Any, image_server: str
) -> None:
    app, client = await start_app(make_settings(), registry())
    a = f"{image_server}frame.png?signature=one"
    b = f"{image_server}copy/frame.png?signature=two"
    first = await wait_for(client, await submit(client, "face-mask", {"image_url": a}))
    again = await wait_for(client, await submit(client, "face-mask", {"image_url": b}))
    assert again["reused_from"] == first["job_id"]
    assert runs(app) == [first["job_id"]]


def keyed(**extra: Any) -> dict[str, Any]:
    return {
        "auth": {
            "enabled": True,
            "keys": [
                {"id": "editor", "sha256": digest(EDITOR)},
                {"id": "partner", "sha256": digest(PARTNER)},
            ],
        },
        **extra,
    }


async def test_one_key_never_receives_another_keys_result(
    make_settings: Any, start_app: Any
) -> None:
    app, client = await start_app(make_settings(**keyed()), registry())
    editor = {"headers": {"Authorization": f"Bearer {EDITOR}"}}
    partner = {"headers": {"Authorization": f"Bearer {PARTNER}"}}
    payload = {"image_url": sample_uri()}
    first = await wait_for_key(client, await submit(client, "face-mask", payload, **editor), editor)
    theirs = await wait_for_key(
        client, await submit(client, "face-mask", payload, **partner), partner
    )
    assert theirs["reused_from"] is None
    assert len(runs(app)) == 2
    mine = await wait_for_key(client, await submit(client, "face-mask", payload, **editor), editor)
    assert mine["reused_from"] == first["job_id"]


async def test_the_operator_may_let_keys_share_results(make_settings: Any, start_app: Any) -> None:
    settings = make_settings(**keyed(reuse={"share_across_keys": True}))
    app, client = await start_app(settings, registry())
    editor = {"headers": {"Authorization": f"Bearer {EDITOR}"}}
    partner = {"headers": {"Authorization": f"Bearer {PARTNER}"}}
    payload = {"image_url": sample_uri()}
    first = await wait_for_key(client, await submit(client, "face-mask", payload, **editor), editor)
    theirs = await wait_for_key(
        client, await submit(client, "face-mask", payload, **partner), partner
    )
    assert theirs["reused_from"] == first["job_id"]
    assert len(runs(app)) == 1


async def test_results_older_than_the_configured_age_are_not_reused(
    make_settings: Any, start_app: Any
) -> None:
    app, client = await start_app(make_settings(reuse={"max_age_s": 0}), registry())
    await wait_for(client, await submit(client, "face-mask", {"image_url": sample_uri()}))
    again = await wait_for(client, await submit(client, "face-mask", {"image_url": sample_uri()}))
    assert again["reused_from"] is None
    assert len(runs(app)) == 2


async def wait_for_key(client: Any, job_id: str, auth: dict[str, Any]) -> dict[str, Any]:
    """``wait_for`` with an API key."""
    import asyncio
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        resp = await client.get(f"/api/v1/jobs/{job_id}", **auth)
        job: dict[str, Any] = await resp.json()
        if job.get("status") in ("completed", "failed", "cancelled"):
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")
