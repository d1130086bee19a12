"""What a submit treats as a reference, and what it keeps of the input."""

from __future__ import annotations

import base64
import io
from typing import Any

from PIL import Image
from support import wait_for

from shortdrama_worker import keys
from shortdrama_worker.contract import (
    CONTRACT_VERSION,
    Handler,
    HandlerInput,
    ImageRef,
    JobContext,
    NoSettings,
    file_ref,
)
from shortdrama_worker.plugins import HandlerRegistry

AudioRef = file_ref(accept=["audio/wav"], max_bytes=64 * 1024)


class CaptionInput(HandlerInput):
    image: ImageRef
    clips: list[AudioRef] = []  # type: ignore[valid-type]
    prompt: str
    score: float | None  # required, and may be null


class CaptionHandler(Handler[CaptionInput, NoSettings]):
    contract_version = CONTRACT_VERSION
    input_model = CaptionInput

    async def run(self, params: CaptionInput, ctx: JobContext) -> dict[str, Any]:
        image = await ctx.fetch_image(params.image, field="image")
        clips = [
            await ctx.fetch_file(c, field=f"clips.{i}", accept=["audio/wav"])
            for i, c in enumerate(params.clips)
        ]
        return {
            "prompt": params.prompt,
            "score": params.score,
            "size": list(image.size),
            "clips": [c.content_type for c in clips],
        }


def _png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (10, 200, 30)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


WAV = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(28)


async def test_only_reference_fields_are_staged_and_nulls_survive_to_the_run(
    make_settings: Any, start_app: Any
) -> None:
    app, client = await start_app(
        make_settings(), HandlerRegistry.from_classes({"caption": CaptionHandler})
    )
    prompt = "data:image/png;base64,this is the editor's text, not an image"
    clip = "data:audio/wav;base64," + base64.b64encode(WAV).decode()
    body = {"image": _png(), "clips": [clip], "prompt": prompt, "score": None}
    resp = await client.post("/api/v1/caption/jobs", json=body)
    assert resp.status == 202, await resp.text()
    job_id = (await resp.json())["job_id"]

    record = await app[keys.STORE].get(job_id)
    assert record is not None
    bucket = app[keys.SETTINGS].results.bucket
    assert record.input["image"].startswith(f"s3://{bucket}/")
    assert record.input["clips"][0].startswith(f"s3://{bucket}/")
    assert record.input["prompt"] == prompt  # text, however it starts
    assert record.input["score"] is None

    job = await wait_for(client, job_id)
    assert job["status"] == "completed", job
    assert job["result"]["prompt"] == prompt
    assert job["result"]["size"] == [32, 24]
    assert job["result"]["clips"] == ["audio/wav"]


async def test_a_file_of_the_wrong_type_is_refused_at_submit_naming_its_field(
    make_settings: Any, start_app: Any
) -> None:
    _, client = await start_app(
        make_settings(), HandlerRegistry.from_classes({"caption": CaptionHandler})
    )
    not_audio = "data:audio/wav;base64," + base64.b64encode(b"%PDF-1.4 a document").decode()
    body = {"image": _png(), "clips": [not_audio], "prompt": "x", "score": 0.5}
    resp = await client.post("/api/v1/caption/jobs", json=body)
    assert resp.status == 422
    error = (await resp.json())["error"]
    assert error["fields"][0]["field"] == "clips.0"
    assert "application/pdf" in error["message"] and "audio/wav" in error["message"]
