"""face_swap and full_face_swap as an editor sees them: images in, swapped image and mask out.

The handlers run against local DashScope and ARK servers (``fakes``). Most
tests drive a handler through a small in-memory ``JobContext``; the last ones
go through the real application, SQS/DynamoDB/S3 on moto.
"""

from __future__ import annotations

import base64
import contextlib
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import structlog
from fakes.ark import FakeArk
from fakes.ark import Reply as ArkReply
from fakes.dashscope import FakeDashScope
from PIL import Image, ImageDraw
from pydantic import ValidationError
from support import submit, wait_for

from shortdrama_worker.contract import FetchedInput, HandlerEnv, Provenance, StoredResult
from shortdrama_worker.contract.errors import InputError, PermanentJobError
from shortdrama_worker.contract.fields import REFERENCE_CHECK
from shortdrama_worker.handlers.face_swap import FaceSwapHandler
from shortdrama_worker.handlers.full_face_swap import FullFaceSwapHandler, FullFaceSwapInput
from shortdrama_worker.inputs.fetch import parse_data_uri, reference_problem
from shortdrama_worker.metrics import Metrics
from shortdrama_worker.plugins import HandlerRegistry

LOG = structlog.get_logger("test")
CONSENT = {"release_form": "RF-2026-0042", "attested_by": "casting: j.doe"}
SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "face.png"
FAST = {"backoff_base_s": 0.01, "backoff_max_s": 0.02, "requests_per_minute": 0}
SKIN = (201, 152, 118)
# Two faces in a 1600x900 frame, as fractions (left, top, right, bottom); the
# fake model lists the right-hand one first.
RIGHT_FACE = (0.60, 0.20, 0.75, 0.55)
LEFT_FACE = (0.15, 0.25, 0.30, 0.60)


def photo(width: int, height: int) -> Image.Image:
    """A smooth picture with no black in it (black means "mask")."""
    ramp = Image.linear_gradient("L")
    across = ramp.transpose(Image.Transpose.ROTATE_90).resize((width, height))
    down = ramp.resize((width, height))
    return Image.merge("RGB", (across, down, across)).point(lambda v: 40 + v * 3 // 4)


def data_uri(image: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buf.getvalue()).decode()}"


def centre(fraction: tuple[float, float, float, float], size: tuple[int, int]) -> tuple[int, int]:
    left, top, right, bottom = fraction
    return round((left + right) / 2 * size[0]), round((top + bottom) / 2 * size[1])


def is_black(pixel: Any) -> bool:
    return all(v < 20 for v in pixel[:3])


class MemoryContext:
    """A ``JobContext`` that keeps results in memory and reads ``data:`` inputs."""

    def __init__(self, http: aiohttp.ClientSession, kind: str) -> None:
        self.job_id = "job-1"
        self.kind = kind
        self.attempt = 1
        self.log = LOG
        self.http = http
        self.settings: dict[str, Any] = {}
        self.metrics = Metrics()
        self.stored: dict[str, tuple[bytes, str, bool]] = {}
        self.provenance: dict[str, Provenance | None] = {}
        self.stages: list[tuple[float, str | None]] = []

    async def fetch_bytes(self, ref: str, *, field: str) -> FetchedInput:
        return parse_data_uri(ref, field, 50 * 1024 * 1024)

    async def fetch_image(self, ref: str, *, field: str) -> Image.Image:
        image = Image.open(io.BytesIO((await self.fetch_bytes(ref, field=field)).data))
        image.load()
        return image

    async def store_result(
        self,
        data: bytes,
        *,
        content_type: str,
        name: str,
        primary: bool = True,
        provenance: Provenance | None = None,
    ) -> StoredResult:
        key = f"results/{self.kind}/{self.job_id}/{name}"
        self.stored[key] = (data, content_type, primary)
        self.provenance[key] = provenance
        return StoredResult(key=key, content_type=content_type, size=len(data))

    async def progress(self, percent: float, stage: str | None = None) -> None:
        self.stages.append((percent, stage))

    def gpu(self) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()

    def image(self, key: str) -> Image.Image:
        return Image.open(io.BytesIO(self.stored[key][0]))


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def ark() -> AsyncIterator[FakeArk]:
    async with FakeArk() as fake:
        yield fake


@pytest.fixture
async def dashscope() -> AsyncIterator[FakeDashScope]:
    async with FakeDashScope(faces=[RIGHT_FACE, LEFT_FACE]) as fake:
        yield fake


def options(ark: FakeArk, dashscope: FakeDashScope | None = None, **extra: Any) -> dict[str, Any]:
    """A handler settings section pointing at the fakes."""
    section: dict[str, Any] = {"ark": {"base_url": ark.base_url, "api_key": ark.api_key, **FAST}}
    if dashscope is not None:
        section["dashscope"] = {
            "base_url": dashscope.base_url,
            "api_key": dashscope.api_key,
            **FAST,
        }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(section.get(key), dict):
            section[key] = {**section[key], **value}
        else:
            section[key] = value
    return section


async def handler(cls: Any, http: aiohttp.ClientSession, section: dict[str, Any]) -> Any:
    kind = "face_swap" if cls is FaceSwapHandler else "full_face_swap"
    env = HandlerEnv(
        kind=kind,
        service_http=http,
        log=LOG,
        settings=cls.settings_model.model_validate(section),
        metrics=Metrics(),
    )
    h = cls(env)
    await h.startup()
    return h


def masked_frame() -> tuple[Image.Image, tuple[int, int]]:
    frame = photo(1600, 900)
    ImageDraw.Draw(frame).ellipse((700, 200, 900, 480), fill=(0, 0, 0))
    return frame, (800, 340)


# --- face_swap -----------------------------------------------------------------------------


async def test_face_swap_fills_the_mask_at_the_input_aspect_ratio(
    http: aiohttp.ClientSession, ark: FakeArk
) -> None:
    h = await handler(FaceSwapHandler, http, options(ark))
    ctx = MemoryContext(http, "face_swap")
    frame, hole = masked_frame()
    params = h.input_model.model_validate(
        {
            "masked_image": data_uri(frame),
            "target_face": data_uri(Image.new("RGB", (300, 300), SKIN), "JPEG"),
            "target_face_consent": CONSENT,
            "watermark": False,
        }
    )
    result = await h.run(params, ctx)

    # 16:9 input → the 16:9 size Seedream recommends.
    assert result["size"] == "2560x1440"
    key = result["image"]["key"]
    assert ctx.stored[key][1:] == ("image/jpeg", True)
    out = ctx.image(key).convert("RGB")
    assert out.size == (2560, 1440)
    filled = out.getpixel((hole[0] * 1.6, hole[1] * 1.6))
    assert all(abs(a - b) < 12 for a, b in zip(filled, SKIN, strict=True))
    assert not is_black(out.getpixel((2540, 1420)))  # no watermark was asked for
    assert ark.requests[0].body["watermark"] is False

    # Traceable: provider, model, inputs (described, not inlined) and cost.
    prov = result["provenance"]
    assert prov["provider"] == "ark" and prov["model"] == "doubao-seedream-4-0-250828"
    assert prov["inputs"]["masked_image"]["ref"].startswith("data:image/png;base64,…")
    assert len(prov["inputs"]["target_face"]["sent_sha256"]) == 64
    assert result["usage"]["ark"]["generated_images"] == 1
    assert len(str(result)) < 5000
    assert [stage for _, stage in ctx.stages] == ["fetching", "generating", "storing"]


async def test_watermark_follows_the_worker_setting_unless_the_job_says(
    http: aiohttp.ClientSession, ark: FakeArk
) -> None:
    h = await handler(FaceSwapHandler, http, options(ark, watermark=True))
    frame, _ = masked_frame()
    params = {
        "masked_image": data_uri(frame),
        "target_face": data_uri(photo(200, 200)),
        "target_face_consent": CONSENT,
    }
    result = await h.run(h.input_model.model_validate(params), MemoryContext(http, "face_swap"))
    assert result["watermark"] is True and ark.requests[-1].body["watermark"] is True

    params["size"] = "2K"
    ctx = MemoryContext(http, "face_swap")
    result = await h.run(h.input_model.model_validate(params), ctx)
    out = ctx.image(result["image"]["key"]).convert("RGB")
    assert out.size == (2048, 2048)
    assert out.getpixel((2040, 2040)) == (255, 255, 255)  # the provider's mark


async def test_rejected_key_fails_the_job_and_degrades_health(
    http: aiohttp.ClientSession, ark: FakeArk
) -> None:
    section = options(ark)
    section["ark"]["api_key"] = "revoked"
    h = await handler(FaceSwapHandler, http, section)
    assert await h.health() == {"ark": "healthy"}
    frame, _ = masked_frame()
    params = {
        "masked_image": data_uri(frame),
        "target_face": data_uri(photo(200, 200)),
        "target_face_consent": CONSENT,
    }
    with pytest.raises(PermanentJobError) as caught:
        await h.run(h.input_model.model_validate(params), MemoryContext(http, "face_swap"))
    assert caught.value.code == "provider_auth"
    assert len(ark.requests) == 1
    assert await h.health() == {"ark": "degraded"}


async def test_no_key_configured_is_degraded(http: aiohttp.ClientSession) -> None:
    h = await handler(FaceSwapHandler, http, {})
    assert await h.health() == {"ark": "degraded"}


async def test_too_wide_input_is_refused_naming_the_field(
    http: aiohttp.ClientSession, ark: FakeArk
) -> None:
    h = await handler(FaceSwapHandler, http, options(ark))
    params = {
        "masked_image": data_uri(photo(2000, 100)),
        "target_face": data_uri(photo(99, 99)),
        "target_face_consent": CONSENT,
    }
    with pytest.raises(InputError) as caught:
        await h.run(h.input_model.model_validate(params), MemoryContext(http, "face_swap"))
    assert caught.value.field == "masked_image"
    assert ark.requests == []


# --- full_face_swap ------------------------------------------------------------------------


async def test_full_face_swap_masks_the_chosen_face_and_swaps_it(
    http: aiohttp.ClientSession, ark: FakeArk, dashscope: FakeDashScope
) -> None:
    h = await handler(FullFaceSwapHandler, http, options(ark, dashscope, detector="qwen_vl"))
    ctx = MemoryContext(http, "full_face_swap")
    frame = photo(1600, 900)
    params = FullFaceSwapInput(
        source_image=data_uri(frame),
        target_face=data_uri(Image.new("RGB", (256, 256), SKIN)),
        target_face_consent=CONSENT,
        face_index=1,  # the right-hand person
    )
    result = await h.run(params, ctx)

    assert result["faces_found"] == 2
    assert [stage for _, stage in ctx.stages] == [
        "fetching",
        "detecting",
        "masking",
        "generating",
        "storing",
    ]
    # The mask is kept (not the primary result) and linked from the result.
    mask_key = result["mask"]["key"]
    assert ctx.stored[mask_key][2] is False and result["mask_url"].key == mask_key
    mask = ctx.image(mask_key).convert("RGB")
    assert mask.size == frame.size
    assert is_black(mask.getpixel(centre(RIGHT_FACE, frame.size)))
    assert not is_black(mask.getpixel(centre(LEFT_FACE, frame.size)))
    # What Seedream got as image 1 is that same mask.
    assert ark.requests[0].images[0].size == frame.size

    out = ctx.image(result["image"]["key"]).convert("RGB")
    assert out.size == (2560, 1440)
    x, y = centre(RIGHT_FACE, (2560, 1440))
    assert all(abs(a - b) < 12 for a, b in zip(out.getpixel((x, y)), SKIN, strict=True))

    assert set(result["usage"]) == {"dashscope", "ark"}
    assert result["usage"]["dashscope"]["total_tokens"] > 0
    detector = result["provenance"]["detector"]
    assert detector["provider"] == "dashscope" and detector["model"] == "qwen3-vl-plus"
    assert await h.health() == {"ark": "healthy", "dashscope": "healthy"}


async def test_no_face_fails_before_anything_is_paid_for(
    http: aiohttp.ClientSession, ark: FakeArk
) -> None:
    async with FakeDashScope(faces=[], answer="empty") as empty:
        h = await handler(FullFaceSwapHandler, http, options(ark, empty, detector="qwen_vl"))
        params = FullFaceSwapInput(
            source_image=data_uri(photo(800, 600)),
            target_face=data_uri(photo(100, 100)),
            target_face_consent=CONSENT,
        )
        with pytest.raises(PermanentJobError, match="no face found"):
            await h.run(params, MemoryContext(http, "full_face_swap"))
    assert ark.requests == []


async def test_face_index_beyond_the_faces_found_is_a_clear_failure(
    http: aiohttp.ClientSession, ark: FakeArk, dashscope: FakeDashScope
) -> None:
    h = await handler(FullFaceSwapHandler, http, options(ark, dashscope, detector="qwen_vl"))
    params = FullFaceSwapInput(
        source_image=data_uri(photo(1600, 900)),
        target_face=data_uri(photo(100, 100)),
        target_face_consent=CONSENT,
        face_index=2,
    )
    with pytest.raises(PermanentJobError) as caught:
        await h.run(params, MemoryContext(http, "full_face_swap"))
    assert caught.value.code == "face_index_out_of_range"
    assert "2 face(s) found" in caught.value.message
    assert ark.requests == []


async def test_moderation_refusal_in_the_pipeline_is_final(
    http: aiohttp.ClientSession, ark: FakeArk, dashscope: FakeDashScope
) -> None:
    ark.script.append(ArkReply.moderation())
    h = await handler(FullFaceSwapHandler, http, options(ark, dashscope, detector="qwen_vl"))
    params = FullFaceSwapInput(
        source_image=data_uri(photo(1600, 900)),
        target_face=data_uri(photo(100, 100)),
        target_face_consent=CONSENT,
    )
    with pytest.raises(PermanentJobError) as caught:
        await h.run(params, MemoryContext(http, "full_face_swap"))
    assert caught.value.code == "content_refused"
    assert "real person" in caught.value.message
    assert len(ark.requests) == 1


async def test_detector_choice_per_job_only_where_allowed(
    http: aiohttp.ClientSession, ark: FakeArk, dashscope: FakeDashScope
) -> None:
    params = FullFaceSwapInput(
        source_image=data_uri(photo(1600, 900)),
        target_face=data_uri(photo(100, 100)),
        target_face_consent=CONSENT,
        detector="qwen_vl",
    )
    locked = await handler(FullFaceSwapHandler, http, options(ark, dashscope))
    with pytest.raises(InputError) as caught:
        await locked.run(params, MemoryContext(http, "full_face_swap"))
    assert caught.value.field == "detector"

    open_ = await handler(
        FullFaceSwapHandler, http, options(ark, dashscope, allow_detector_choice=True)
    )
    result = await open_.run(params, MemoryContext(http, "full_face_swap"))
    assert result["provenance"]["detector"]["name"] == "qwen_vl"


async def test_full_face_swap_with_the_local_detector(
    http: aiohttp.ClientSession, ark: FakeArk
) -> None:
    h = await handler(FullFaceSwapHandler, http, options(ark, detector="local"))
    assert await h.health() == {"ark": "healthy"}  # no paid detector in use
    sample = Image.open(SAMPLE).convert("RGB")
    ctx = MemoryContext(http, "full_face_swap")
    params = FullFaceSwapInput(
        source_image=data_uri(sample),
        target_face=data_uri(photo(100, 100)),
        target_face_consent=CONSENT,
    )
    result = await h.run(params, ctx)
    assert result["faces_found"] == 1
    assert "dashscope" not in result["usage"]
    mask = ctx.image(result["mask"]["key"]).convert("RGB")
    box = result["face_box"]
    # The astronaut's face is at (179-267, 60-174) in the NASA photo.
    assert is_black(mask.getpixel((box["x"] + box["width"] // 2, box["y"] + box["height"] // 2)))
    assert 170 < box["x"] + box["width"] // 2 < 280


def test_bad_requests_are_refused_at_submit() -> None:
    # A real bucket name: S3 names are 3–63 characters, and references are checked.
    good = {
        "source_image": "https://x.example/a.png",
        "target_face": "s3://frames/k.png",
        "target_face_consent": CONSENT,
    }
    FullFaceSwapInput.model_validate(good)
    for bad in (
        {**good, "face_index": -1},
        {**good, "size": "100x100"},
        {**good, "mode": "undress"},  # unknown fields are an error, not ignored
        {**good, "source_image": "ftp://x/a.png"},
    ):
        with pytest.raises(ValidationError):
            # As the API validates: with the host's reference policy.
            FullFaceSwapInput.model_validate(bad, context={REFERENCE_CHECK: reference_problem})
    schema = FullFaceSwapInput.model_json_schema()
    assert all("description" in schema["properties"][f] for f in ("face_index", "size"))


# --- Through the application (SQS, DynamoDB and S3 on moto) --------------------------------


def app_options(ark: FakeArk, dashscope: FakeDashScope) -> dict[str, Any]:
    return {"options": {"full_face_swap": options(ark, dashscope, detector="qwen_vl")}}


async def test_full_face_swap_end_to_end(
    make_settings: Any, start_app: Any, aws: Any, ark: FakeArk, dashscope: FakeDashScope
) -> None:
    settings = make_settings(handlers=app_options(ark, dashscope))
    registry = HandlerRegistry.from_classes({"full_face_swap": FullFaceSwapHandler})
    _, client = await start_app(settings, registry)
    frame = photo(1600, 900)
    job_id = await submit(
        client,
        "full-face-swap",
        {
            "source_image": data_uri(frame),
            "target_face": data_uri(Image.new("RGB", (256, 256), SKIN)),
            "target_face_consent": CONSENT,
            "face_index": 0,
            "watermark": False,
        },
    )
    job = await wait_for(client, job_id, timeout=60)
    assert job["status"] == "completed", job
    result = job["result"]
    # GET presigns afresh, so only the object path is stable.
    assert urlsplit(job["result_url"]).path == urlsplit(result["image_url"]).path

    bucket = settings.results.bucket
    swapped = await aws.s3.get_object(Bucket=bucket, Key=result["image"]["key"])
    out = Image.open(io.BytesIO(await swapped["Body"].read())).convert("RGB")
    assert out.size == (2560, 1440)
    mask_obj = await aws.s3.get_object(Bucket=bucket, Key=result["mask"]["key"])
    mask = Image.open(io.BytesIO(await mask_obj["Body"].read())).convert("RGB")
    assert is_black(mask.getpixel(centre(LEFT_FACE, frame.size)))
    assert not is_black(mask.getpixel(centre(RIGHT_FACE, frame.size)))
    async with client.session.get(result["mask_url"]) as resp:
        assert resp.status == 200

    health = await (await client.get("/health")).json()
    assert health["checks"]["ark"] == "healthy" and health["checks"]["dashscope"] == "healthy"


async def test_end_to_end_rejected_key_fails_once_and_shows_on_health(
    make_settings: Any, start_app: Any, ark: FakeArk, dashscope: FakeDashScope
) -> None:
    handlers = app_options(ark, dashscope)
    handlers["options"]["full_face_swap"]["ark"]["api_key"] = "revoked"
    settings = make_settings(handlers=handlers)
    registry = HandlerRegistry.from_classes({"full_face_swap": FullFaceSwapHandler})
    _, client = await start_app(settings, registry)
    job_id = await submit(
        client,
        "full-face-swap",
        {
            "source_image": data_uri(photo(1600, 900)),
            "target_face": data_uri(photo(90, 90)),
            "target_face_consent": CONSENT,
        },
    )
    job = await wait_for(client, job_id, timeout=60)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "provider_auth"
    assert job["attempts"] == 1
    assert len(ark.requests) == 1
    health = await (await client.get("/health")).json()
    assert health["status"] == "degraded" and health["checks"]["ark"] == "degraded"
