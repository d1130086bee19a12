"""The provider clients against local DashScope and ARK servers speaking their protocols."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import structlog
from fakes.ark import FakeArk
from fakes.ark import Reply as ArkReply
from fakes.dashscope import FakeDashScope
from fakes.dashscope import Reply as DsReply
from PIL import Image
from pydantic import SecretStr

from shortdrama_worker.contract.errors import InputError, PermanentJobError, TransientJobError
from shortdrama_worker.faces.qwen_vl import QwenVLDetector
from shortdrama_worker.metrics import Metrics
from shortdrama_worker.providers.dashscope import (
    DashScopeClient,
    DashScopeSettings,
    extract_boxes,
)
from shortdrama_worker.providers.http import RateLimiter, parse_retry_after
from shortdrama_worker.providers.images import prepare_image
from shortdrama_worker.providers.seedream import (
    SeedreamClient,
    SeedreamSettings,
    check_size,
    nearest_size,
)

LOG = structlog.get_logger("test")
# Fast backoff: a test that waits long did so because it was told to (Retry-After).
FAST = {"backoff_base_s": 0.01, "backoff_max_s": 0.02, "requests_per_minute": 0}


def photo(width: int, height: int) -> Image.Image:
    """A smooth non-black test picture (black is reserved for masks)."""
    ramp = Image.linear_gradient("L")
    across = ramp.transpose(Image.Transpose.ROTATE_90).resize((width, height))
    down = ramp.resize((width, height))
    rgb = Image.merge("RGB", (across, down, across))
    return rgb.point(lambda v: 40 + v * 3 // 4)


def usage(metrics: Metrics, provider: str, unit: str) -> float:
    value = metrics.registry.get_sample_value(
        "shortdrama_provider_usage_total", {"provider": provider, "unit": unit}
    )
    return value or 0.0


def errors(metrics: Metrics, provider: str, status_class: str) -> float:
    value = metrics.registry.get_sample_value(
        "shortdrama_provider_errors_total", {"provider": provider, "status_class": status_class}
    )
    return value or 0.0


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def dashscope(
    fake: FakeDashScope, http: aiohttp.ClientSession, metrics: Metrics, **overrides: Any
) -> DashScopeClient:
    settings = DashScopeSettings(
        base_url=fake.base_url, api_key=SecretStr(fake.api_key), **{**FAST, **overrides}
    )
    return DashScopeClient(settings, http=http, metrics=metrics, log=LOG, config_hint="test")


def seedream(
    fake: FakeArk, http: aiohttp.ClientSession, metrics: Metrics, **overrides: Any
) -> SeedreamClient:
    settings = SeedreamSettings(
        base_url=fake.base_url, api_key=SecretStr(fake.api_key), **{**FAST, **overrides}
    )
    return SeedreamClient(settings, http=http, metrics=metrics, log=LOG, config_hint="test")


def near(box: Any, expected: tuple[float, float, float, float], tol: float = 4) -> bool:
    left, top, right, bottom = expected
    return (
        abs(box.x - left) <= tol
        and abs(box.y - top) <= tol
        and abs(box.x + box.width - right) <= tol
        and abs(box.y + box.height - bottom) <= tol
    )


# --- DashScope grounding -------------------------------------------------------------------


@pytest.mark.parametrize("model", ["qwen3-vl-plus", "qwen2.5-vl-72b-instruct"])
async def test_faces_come_back_in_image_pixels_left_to_right(
    http: aiohttp.ClientSession, model: str
) -> None:
    # The model lists the right-hand face first; face_index must still count from the left.
    faces = [(0.60, 0.20, 0.80, 0.55), (0.10, 0.30, 0.25, 0.60)]
    metrics = Metrics()
    async with FakeDashScope(faces=faces) as fake:
        detector = QwenVLDetector(dashscope(fake, http, metrics, model=model), LOG)
        image = photo(1600, 900)
        grounding = await detector.locate(image)

    assert len(grounding.faces) == 2
    assert near(grounding.faces[0], (160, 270, 400, 540), tol=8)
    assert near(grounding.faces[1], (960, 180, 1280, 495), tol=8)
    assert grounding.model == model
    assert grounding.usage["total_tokens"] > 0
    assert usage(metrics, "dashscope", "input_tokens") == grounding.usage["prompt_tokens"]
    if model.startswith("qwen2.5"):
        # Absolute coordinates only map back if we sent the model's own 28 px grid.
        sent = fake.requests[0].image_size
        assert sent is not None and sent[0] % 28 == 0 and sent[1] % 28 == 0


@pytest.mark.parametrize("answer", ["fenced", "plain", "truncated"])
async def test_fenced_plain_and_truncated_answers_all_give_every_face(
    http: aiohttp.ClientSession, answer: str
) -> None:
    faces = [(0.05, 0.1, 0.2, 0.4), (0.4, 0.1, 0.55, 0.4), (0.7, 0.1, 0.85, 0.4)]
    async with FakeDashScope(faces=faces, answer=answer) as fake:  # type: ignore[arg-type]
        grounding = await QwenVLDetector(dashscope(fake, http, Metrics()), LOG).locate(
            photo(1000, 1000)
        )
    assert [round(f.x, -1) for f in grounding.faces] == [50, 400, 700]
    assert grounding.truncated is (answer == "truncated")


@pytest.mark.parametrize("answer", ["prose", "empty"])
async def test_no_face_answers_give_no_boxes(http: aiohttp.ClientSession, answer: str) -> None:
    async with FakeDashScope(faces=[(0.1, 0.1, 0.3, 0.3)], answer=answer) as fake:  # type: ignore[arg-type]
        faces = await QwenVLDetector(dashscope(fake, http, Metrics()), LOG).detect(photo(640, 480))
    assert faces == []


def test_box_parsing_tolerates_what_models_write() -> None:
    assert extract_boxes('```json\n{"bbox_2d": [10, 20, 30, 40], "label": "face"}\n```') == [
        (10, 20, 30, 40)
    ]
    # Cut off inside the second box: the first is kept, the broken one dropped.
    assert extract_boxes('[{"bbox_2d": [1, 2, 3, 4]}, {"bbox_2d": [5, 6,') == [(1, 2, 3, 4)]
    assert extract_boxes('{"faces": [{"bbox": [1, 2, 3, 4]}]} Hope this helps!') == [(1, 2, 3, 4)]
    assert extract_boxes("I cannot see any face.") == []


async def test_reversed_and_out_of_frame_corners_are_clamped(http: aiohttp.ClientSession) -> None:
    async with FakeDashScope(faces=[(0.9, 0.5, 1.2, 0.2)]) as fake:
        faces = await QwenVLDetector(dashscope(fake, http, Metrics()), LOG).detect(photo(1000, 500))
    assert len(faces) == 1
    assert faces[0].x + faces[0].width <= 1000 and faces[0].y == 100


# --- Call discipline -----------------------------------------------------------------------


async def test_429_waits_for_retry_after_then_succeeds(http: aiohttp.ClientSession) -> None:
    async with FakeDashScope(faces=[(0.1, 0.1, 0.3, 0.3)]) as fake:
        fake.script.append(DsReply.rate_limited(retry_after=1))
        metrics = Metrics()
        faces = await QwenVLDetector(dashscope(fake, http, metrics), LOG).detect(photo(400, 300))
    assert len(faces) == 1
    assert fake.served == [429, 200]
    # Backoff alone would have retried after ~10 ms.
    assert fake.requests[1].at - fake.requests[0].at >= 0.95
    assert errors(metrics, "dashscope", "4xx") == 1


async def test_long_retry_after_returns_the_job_to_the_queue(http: aiohttp.ClientSession) -> None:
    async with FakeDashScope() as fake:
        fake.script.append(DsReply.rate_limited(retry_after=120))
        client = dashscope(fake, http, Metrics(), max_retry_after_s=5)
        with pytest.raises(TransientJobError) as caught:
            await QwenVLDetector(client, LOG).detect(photo(400, 300))
    assert caught.value.retry_after == 120
    assert fake.served == [429]


async def test_moderation_refusal_is_not_retried(http: aiohttp.ClientSession) -> None:
    async with FakeDashScope() as fake:
        fake.script.append(DsReply.moderation())
        with pytest.raises(PermanentJobError) as caught:
            await QwenVLDetector(dashscope(fake, http, Metrics()), LOG).detect(photo(400, 300))
    assert caught.value.code == "content_refused"
    assert "use different images" in caught.value.message
    assert fake.served == [400]


async def test_bad_key_fails_at_once_and_marks_the_provider_unhealthy(
    http: aiohttp.ClientSession,
) -> None:
    async with FakeDashScope(api_key="the-right-key") as fake:
        settings = DashScopeSettings(base_url=fake.base_url, api_key=SecretStr("wrong"), **FAST)
        client = DashScopeClient(settings, http=http, metrics=Metrics(), log=LOG, config_hint="x")
        assert client.provider.healthy
        with pytest.raises(PermanentJobError) as caught:
            await QwenVLDetector(client, LOG).detect(photo(400, 300))
    assert caught.value.code == "provider_auth"
    assert "wrong" not in caught.value.message  # the key is never echoed
    assert fake.served == [401]
    assert not client.provider.healthy


async def test_missing_key_sends_nothing(http: aiohttp.ClientSession) -> None:
    async with FakeDashScope() as fake:
        settings = DashScopeSettings(base_url=fake.base_url, **FAST)
        client = DashScopeClient(
            settings, http=http, metrics=Metrics(), log=LOG, config_hint="the.key.setting"
        )
        with pytest.raises(PermanentJobError) as caught:
            await QwenVLDetector(client, LOG).detect(photo(400, 300))
    assert caught.value.code == "provider_not_configured"
    assert "the.key.setting" in caught.value.message
    assert fake.requests == []
    assert not client.provider.healthy


async def test_server_errors_are_retried_then_reported_as_transient(
    http: aiohttp.ClientSession,
) -> None:
    async with FakeDashScope() as fake:
        fake.script.extend([DsReply.server_error()] * 3)
        with pytest.raises(TransientJobError) as caught:
            await QwenVLDetector(dashscope(fake, http, Metrics(), max_attempts=3), LOG).detect(
                photo(400, 300)
            )
    assert fake.served == [500, 500, 500]
    assert caught.value.code == "provider_unavailable"


async def test_unreachable_provider_is_transient(http: aiohttp.ClientSession) -> None:
    async with FakeDashScope() as fake:
        url = fake.base_url
    settings = DashScopeSettings(base_url=url, api_key=SecretStr("k"), max_attempts=2, **FAST)
    metrics = Metrics()
    client = DashScopeClient(settings, http=http, metrics=metrics, log=LOG, config_hint="x")
    with pytest.raises(TransientJobError):
        await QwenVLDetector(client, LOG).detect(photo(400, 300))
    assert errors(metrics, "dashscope", "connection") == 2


async def test_rate_limiter_queues_a_burst_instead_of_tripping_429s(
    http: aiohttp.ClientSession,
) -> None:
    image = photo(200, 200)
    # The provider refuses requests closer than 0.2 s; no retries, so any 429 fails a call.
    async with FakeDashScope(faces=[(0.1, 0.1, 0.5, 0.5)], min_interval_s=0.2) as fake:
        limited = dashscope(fake, http, Metrics(), max_attempts=1, requests_per_minute=240)
        started = time.monotonic()
        results = await asyncio.gather(
            *(QwenVLDetector(limited, LOG).detect(image) for _ in range(5))
        )
        elapsed = time.monotonic() - started
        assert all(len(r) == 1 for r in results)
        assert fake.served == [200] * 5
        assert elapsed >= 4 * 0.25 - 0.05

        # The same burst without the limiter trips the provider's limit.
        fake.served.clear()
        unlimited = dashscope(fake, http, Metrics(), max_attempts=1, requests_per_minute=0)
        outcomes = await asyncio.gather(
            *(QwenVLDetector(unlimited, LOG).detect(image) for _ in range(5)),
            return_exceptions=True,
        )
    assert any(isinstance(o, TransientJobError) for o in outcomes)
    assert 429 in fake.served


async def test_retry_after_pauses_every_queued_caller() -> None:
    limiter = RateLimiter(requests_per_minute=0)
    limiter.pause(0.3)
    started = time.monotonic()
    await asyncio.gather(limiter.acquire(), limiter.acquire())
    assert time.monotonic() - started >= 0.28


def test_retry_after_header_forms() -> None:
    assert parse_retry_after("3") == 3
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10
    assert parse_retry_after("soon") is None


# --- Image limits --------------------------------------------------------------------------


async def test_tiny_and_sliver_images_are_refused_with_the_field_named(
    http: aiohttp.ClientSession,
) -> None:
    async with FakeArk() as fake:
        limits = seedream(fake, http, Metrics()).limits
    with pytest.raises(InputError, match=r"source_image: .*at least 15 px"):
        prepare_image(photo(10, 400), limits, field="source_image")
    with pytest.raises(InputError, match=r"target_face: .*20\.0:1.*crop"):
        prepare_image(photo(2000, 100), limits, field="target_face")


def test_oversize_images_are_scaled_within_the_pixel_limit() -> None:
    from shortdrama_worker.providers.images import ImageLimits

    limits = ImageLimits(
        "P", min_side=15, max_pixels=1_000_000, max_bytes=10_000_000, max_aspect_ratio=16
    )
    prepared = prepare_image(photo(3000, 2000), limits, field="f")
    assert prepared.width * prepared.height <= 1_000_000
    assert abs(prepared.width / prepared.height - 1.5) < 0.01


# --- Seedream ------------------------------------------------------------------------------


def data_uri(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize("response_format", ["b64_json", "url"])
async def test_seedream_returns_the_image_in_hand(
    http: aiohttp.ClientSession, response_format: str
) -> None:
    metrics = Metrics()
    async with FakeArk() as fake:
        client = seedream(fake, http, metrics, response_format=response_format)
        result = await client.generate(
            prompt="swap",
            images=[data_uri(photo(300, 200)), data_uri(photo(100, 100))],
            size="2304x1728",
            watermark=False,
        )
    assert (result.width, result.height) == (2304, 1728)
    assert result.content_type == "image/jpeg"
    assert Image.open(io.BytesIO(result.data)).size == (2304, 1728)
    assert result.usage["generated_images"] == 1
    assert usage(metrics, "ark", "images") == 1
    body = fake.requests[0].body
    assert body["watermark"] is False and len(body["image"]) == 2
    assert body["response_format"] == response_format
    assert len(fake.downloads) == (1 if response_format == "url" else 0)


@pytest.mark.parametrize(
    ("mode", "code"),
    [
        ("expired", "result_expired"),
        ("missing", "result_expired"),
        ("unreachable", "result_unavailable"),
    ],
)
async def test_lost_result_url_is_a_clear_transient_failure(
    http: aiohttp.ClientSession, mode: str, code: str
) -> None:
    metrics = Metrics()
    async with FakeArk(result=mode) as fake:  # type: ignore[arg-type]
        client = seedream(fake, http, metrics, response_format="url")
        with pytest.raises(TransientJobError) as caught:
            await client.generate(
                prompt="p", images=[data_uri(photo(100, 100))], size="2K", watermark=True
            )
    assert caught.value.code == code
    assert "generated the image" in caught.value.message
    # The image was billed even though it was lost, and that shows.
    assert usage(metrics, "ark", "images") == 1
    assert len(fake.requests) == 1  # no second paid generation inside one attempt


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        (ArkReply.moderation(), "content_refused"),
        (ArkReply.output_refused(), "content_refused"),
        (ArkReply.spending_cap(), "provider_quota"),
        (ArkReply.unauthorized(), "provider_auth"),
    ],
)
async def test_seedream_refusals_fail_at_once(
    http: aiohttp.ClientSession, reply: ArkReply, code: str
) -> None:
    async with FakeArk() as fake:
        fake.script.append(reply)
        with pytest.raises(PermanentJobError) as caught:
            await seedream(fake, http, Metrics()).generate(
                prompt="p", images=[data_uri(photo(100, 100))], size="2K", watermark=True
            )
    assert caught.value.code == code
    assert len(fake.requests) == 1


async def test_seedream_429_then_success(http: aiohttp.ClientSession) -> None:
    async with FakeArk() as fake:
        fake.script.append(ArkReply.rate_limited(retry_after=1))
        result = await seedream(fake, http, Metrics()).generate(
            prompt="p", images=[data_uri(photo(100, 100))], size="2K", watermark=True
        )
    assert result.width == 2048
    assert fake.requests[1].at - fake.requests[0].at >= 0.95


def test_auto_size_follows_the_input_aspect_ratio() -> None:
    sizes = SeedreamSettings().auto_sizes
    assert nearest_size(1920, 1080, sizes) == "2560x1440"
    assert nearest_size(1080, 1920, sizes) == "1440x2560"
    assert nearest_size(1000, 1010, sizes) == "2048x2048"
    assert nearest_size(4000, 3000, sizes) == "2304x1728"


@pytest.mark.parametrize("size", ["100x100", "9000x9000", "8000x200", "huge"])
def test_impossible_sizes_are_refused(size: str) -> None:
    with pytest.raises(ValueError):
        check_size(size)
