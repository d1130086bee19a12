"""Hostile images: formats outside the allow-list, slivers, oversize headers, and
decoded pixels bounded across the process."""

from __future__ import annotations

import asyncio
import base64
import io
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from PIL import Image
from support import ScriptedHandler, eventually, submit, wait_for

from shortdrama_worker import keys
from shortdrama_worker.inputs.fetch import PixelBudget, decode_image, draft_size
from shortdrama_worker.plugins import HandlerRegistry

EPS = (
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n"
    b"newpath 0 0 moveto 16 16 lineto stroke\nshowpage\n%%EOF\n"
)


def registry() -> HandlerRegistry:
    return HandlerRegistry.from_classes({"scripted": ScriptedHandler})


def encoded(fmt: str, size: tuple[int, int] = (32, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (90, 120, 30)).save(buffer, format=fmt)
    return buffer.getvalue()


def as_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


@pytest.fixture
async def image_server() -> Any:
    """Serves whatever bytes a test puts under a path, labelled image/png."""
    files: dict[str, bytes] = {}

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=files[request.match_info["name"]], content_type="image/png")

    app = web.Application()
    app.router.add_get("/{name}", serve)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    server.files = files  # type: ignore[attr-defined]
    yield server
    await server.close()


@pytest.mark.parametrize(
    "data",
    [EPS, encoded("BMP"), encoded("GIF"), encoded("TIFF"), encoded("PPM"), encoded("ICO")],
    ids=["eps", "bmp", "gif", "tiff", "ppm", "ico"],
)
async def test_formats_outside_the_allow_list_are_refused_however_labelled(
    make_settings: Any, start_app: Any, image_server: Any, data: bytes
) -> None:
    _, client = await start_app(make_settings(), registry())
    resp = await client.post("/api/v1/scripted/jobs", json={"image_url": as_uri(data)})
    assert resp.status == 422
    assert "image_url: not a PNG, JPEG or WebP image" in (await resp.json())["error"]["message"]
    image_server.files["frame.png"] = data
    job = await wait_for(
        client,
        await submit(client, "scripted", {"image_url": str(image_server.make_url("/frame.png"))}),
    )
    assert job["status"] == "failed"
    assert job["attempts"] == 1
    assert job["error"]["code"] == "not_an_image"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_the_accepted_formats_decode(fmt: str) -> None:
    assert decode_image(encoded(fmt), "image_url", 10_000).size == (32, 32)


@pytest.mark.parametrize("size", [(1, 5000), (5000, 1), (4, 4)])
async def test_slivers_fail_once_naming_the_field(
    make_settings: Any, start_app: Any, image_server: Any, size: tuple[int, int]
) -> None:
    _, client = await start_app(make_settings(), registry())
    data = encoded("PNG", size)
    resp = await client.post("/api/v1/scripted/jobs", json={"image_url": as_uri(data)})
    assert resp.status == 422
    assert "each side must be at least 8 pixels" in (await resp.json())["error"]["message"]
    image_server.files["sliver.png"] = data
    url = str(image_server.make_url("/sliver.png"))
    job = await wait_for(client, await submit(client, "scripted", {"image_url": url}))
    assert job["attempts"] == 1, "the same image fails the same way on every attempt"
    assert job["error"]["code"] == "image_too_small"
    assert job["error_message"].startswith("image_url: image is")


async def test_a_data_uri_over_the_pixel_limit_is_refused_at_submit(
    make_settings: Any, start_app: Any
) -> None:
    _, client = await start_app(make_settings(inputs={"max_pixels": 10_000}), registry())
    resp = await client.post(
        "/api/v1/scripted/jobs", json={"image_url": as_uri(encoded("PNG", (200, 100)))}
    )
    assert resp.status == 422
    error = (await resp.json())["error"]
    assert error["fields"][0] == {
        "field": "image_url",
        "message": "image is 200×100, over the limit of 10000 pixels",
        "type": "input_too_large",
    }


async def test_decoded_pixels_wait_for_room_in_the_process_budget(
    make_settings: Any, start_app: Any, image_server: Any
) -> None:
    # Room for one 100×100 image: the second job decodes only after the first ends.
    settings = make_settings(inputs={"max_pixels_in_flight": 10_000})
    app, client = await start_app(settings, registry())
    image_server.files["a.png"] = encoded("PNG", (100, 100))
    url = str(image_server.make_url("/a.png"))
    first = await submit(client, "scripted", {"image_url": url, "sleep_s": 1.0})
    await wait_for(client, first, ("processing",))
    second = await submit(client, "scripted", {"image_url": url})
    done_first, done_second = await wait_for(client, first), await wait_for(client, second)
    assert done_first["status"] == done_second["status"] == "completed"
    assert done_second["updated_at"] > done_first["updated_at"]
    budget = app[keys.RUNNER].fetcher.budget
    await eventually(lambda: budget.in_use == 0, what="every job gave its pixels back")


async def test_the_budget_admits_in_order_and_survives_cancellation() -> None:
    budget = PixelBudget(100)
    assert await budget.acquire(60) == 60
    waiting = asyncio.create_task(budget.acquire(60))
    cancelled = asyncio.create_task(budget.acquire(10))
    await asyncio.sleep(0)
    assert not waiting.done() and not cancelled.done()  # first come, first served
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    # A job already holding pixels is never made to wait (no deadlock).
    assert await budget.acquire(60, wait=False) == 60
    budget.release(60)
    budget.release(60)
    assert await waiting == 60
    assert budget.in_use == 60
    assert await budget.acquire(10_000, wait=False) == 100, "larger than the budget: admitted alone"


def test_jpeg_decodes_at_the_smallest_scale_that_covers_the_need() -> None:
    data = encoded("JPEG", (1600, 1200))
    image = decode_image(data, "image_url", 10_000_000, max_side=400)
    assert image.size == draft_size((1600, 1200), 400) == (400, 300)
    assert decode_image(data, "image_url", 10_000_000, max_side=500).size == (800, 600)
