"""multipart/form-data submits and the image checks every inline image passes at submit."""

from __future__ import annotations

import base64
import io
import os
from typing import Any

import aiohttp
import pytest
from PIL import Image
from support import ScriptedHandler, wait_for

from shortdrama_worker.plugins import HandlerRegistry


def registry() -> HandlerRegistry:
    return HandlerRegistry.from_classes({"scripted": ScriptedHandler})


def png(width: int = 16, height: int = 12) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
async def api(make_settings: Any, start_app: Any) -> Any:
    settings = make_settings(inputs={"max_pixels": 10_000, "max_bytes": 64 * 1024})
    _, client = await start_app(settings, registry())
    return client


def form(**parts: Any) -> aiohttp.FormData:
    data = aiohttp.FormData()
    for name, value in parts.items():
        if isinstance(value, bytes):
            data.add_field(name, value, filename=f"{name}.png", content_type="image/png")
        else:
            data.add_field(name, value)
    return data


async def test_a_file_part_runs_like_an_inline_image(api: Any) -> None:
    resp = await api.post("/api/v1/scripted/jobs", data=form(image_url=png(), sleep_s="0"))
    assert resp.status == 202, await resp.text()
    job = await wait_for(api, (await resp.json())["job_id"])
    assert job["status"] == "completed"
    assert job["result"]["size"] == [16, 12]
    # Staged to S3 like a data: URI, never kept inline in the record.
    listed = (await (await api.get("/api/v1/jobs")).json())["jobs"][0]
    assert listed["input"]["image_url"].startswith("s3://")
    async with api.session.get(listed["input_urls"]["image_url"]) as staged:
        assert staged.headers["Content-Type"] == "image/png"
        assert await staged.read() == png()


async def test_other_fields_come_as_parts_or_one_json_part(api: Any) -> None:
    data = aiohttp.FormData()
    data.add_field("image_url", png(), filename="x.png", content_type="image/png")
    data.add_field("json", '{"fail_times": 1}', content_type="application/json")
    resp = await api.post("/api/v1/scripted/jobs", data=data)
    job = await wait_for(api, (await resp.json())["job_id"])
    assert job["attempts"] == 2  # fail_times reached the handler as an integer
    # A text part that is not valid for its field is refused as a JSON one would be.
    resp = await api.post("/api/v1/scripted/jobs", data=form(image_url=png(), fail_times="many"))
    assert resp.status == 422
    assert (await resp.json())["error"]["fields"][0]["field"] == "fail_times"


@pytest.mark.parametrize("as_upload", [True, False], ids=["upload", "data-uri"])
async def test_non_images_and_oversize_images_are_refused_at_submit_naming_the_field(
    api: Any, as_upload: bool
) -> None:
    async def send(content: bytes) -> Any:
        if as_upload:
            return await api.post("/api/v1/scripted/jobs", data=form(image_url=content))
        uri = "data:image/png;base64," + base64.b64encode(content).decode()
        return await api.post("/api/v1/scripted/jobs", json={"image_url": uri})

    resp = await send(b"%PDF-1.4 not a picture at all")
    assert resp.status == 422
    assert (await resp.json())["error"]["message"].startswith(
        "image_url: not a PNG, JPEG or WebP image"
    )

    resp = await send(png(200, 100))  # 20,000 pixels, limit 10,000
    assert resp.status == 422
    message = (await resp.json())["error"]["message"]
    assert "image_url" in message and "10000" in message

    resp = await send(png(10, 10) + b"\0" * 70 * 1024)  # over inputs.max_bytes
    assert resp.status == 422
    assert str(64 * 1024) in (await resp.json())["error"]["message"]


async def test_a_multipart_body_over_the_body_limit_is_413_naming_it(
    make_settings: Any, start_app: Any
) -> None:
    settings = make_settings(api={"max_body_bytes": 4096}, inputs={"max_bytes": 1 << 20})
    _, api = await start_app(settings, registry())
    noise = Image.frombytes("RGB", (64, 64), os.urandom(64 * 64 * 3))
    buffer = io.BytesIO()
    noise.save(buffer, format="PNG")  # incompressible: well over 4 KiB
    resp = await api.post("/api/v1/scripted/jobs", data=form(image_url=buffer.getvalue()))
    assert resp.status == 413
    assert "4096" in (await resp.json())["error"]["message"]
