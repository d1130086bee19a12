"""The SageMaker back end against the local sagemaker-runtime server and moto's S3."""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from conftest import REGION, decode, image_bytes
from fake_sagemaker import Endpoint, FakeSageMakerRuntime, Model, Reply
from PIL import Image
from shortdrama_worker.contract import PermanentJobError, TransientJobError
from shortdrama_worker.contract.testing import FakeJobContext, RecordedMetrics, data_uri, make_env

from shortdrama_compose.handler import ComposeHandler
from shortdrama_compose.model import ComposeInput

PERSON, PLACE = (200, 30, 30), (30, 200, 30)
CLOTHES = [(30, 30, 200), (200, 200, 30)]


def seed_body(**extra: Any) -> dict[str, Any]:
    """The replaced system's camelCase body."""
    return {
        "personImage": data_uri(image_bytes(PERSON)),
        "clothingImages": [data_uri(image_bytes(c)) for c in CLOTHES],
        "placeImage": data_uri(image_bytes(PLACE, (160, 120))),
        **extra,
    }


def instantid_standin(http: aiohttp.ClientSession, *, raw: bool = False) -> Model:
    """A container taking the seed's JSON of URLs, as the InstantID endpoint did.

    It really downloads every image and draws the person and each garment on
    the place, so the tests can see that what it was given arrived.
    """

    async def model(body: bytes, content_type: str, accept: str) -> Reply:
        request = json.loads(body)

        async def get(url: str) -> Image.Image:
            async with http.get(url) as response:
                if response.status != 200:
                    raise AssertionError(f"{url}: {response.status}")
                return decode(await response.read()).convert("RGB")

        place = (await get(request["place_image"])).resize((160, 120))
        place.paste((await get(request["person_image"])).resize((40, 60)), (60, 20))
        for index, url in enumerate(request["clothing_images"]):
            place.paste((await get(url)).resize((20, 20)), (index * 20, 100))
        buffer = io.BytesIO()
        place.save(buffer, format="PNG")
        if raw:
            return Reply(buffer.getvalue(), "image/png")
        answer = {
            "imageUrl": base64.b64encode(buffer.getvalue()).decode(),
            "status": "success",
            "message": "ok",
        }
        return Reply(json.dumps(answer).encode())

    return model


def failing(status: int, text: str) -> Model:
    async def model(body: bytes, content_type: str, accept: str) -> Reply:
        return Reply(text.encode(), "text/plain", status=status)

    return model


Start = Callable[..., Awaitable[ComposeHandler]]


@pytest.fixture
async def runtime(moto_endpoint: str) -> AsyncIterator[FakeSageMakerRuntime]:
    async with FakeSageMakerRuntime(s3_endpoint_url=moto_endpoint) as fake:
        yield fake


@pytest.fixture
async def start(
    http: aiohttp.ClientSession, runtime: FakeSageMakerRuntime, moto_endpoint: str, bucket: str
) -> AsyncIterator[Start]:
    handlers: list[ComposeHandler] = []

    async def start(metrics: RecordedMetrics | None = None, **sagemaker: Any) -> ComposeHandler:
        section = {
            "region": REGION,
            "bucket": bucket,
            "runtime_endpoint_url": runtime.url,
            "sagemaker_endpoint_url": moto_endpoint,
            "s3_endpoint_url": moto_endpoint,
            "backoff_base_s": 0.01,
            "backoff_max_s": 0.02,
            "async_poll_interval_s": 0.05,
            **sagemaker,
        }
        env = make_env(
            ComposeHandler,
            {"backend": "sagemaker", "sagemaker": section},
            kind="compose",
            service_http=http,
            metrics=metrics,
        )
        handler = ComposeHandler(env)
        await handler.startup()
        handlers.append(handler)
        return handler

    yield start
    for handler in handlers:
        await handler.shutdown()


def job(**extra: Any) -> ComposeInput:
    return ComposeInput.model_validate(seed_body(**extra))


async def test_the_seed_body_goes_to_a_realtime_endpoint_as_urls_and_comes_back_stored(
    start: Start, runtime: FakeSageMakerRuntime, http: aiohttp.ClientSession
) -> None:
    runtime.add(Endpoint("instantid", instantid_standin(http)))
    handler = await start(endpoint_name="instantid")
    ctx = FakeJobContext(kind="compose", http=http)

    result = await handler.run(job(), ctx)

    (call,) = runtime.calls("InvokeEndpoint")
    sent = json.loads(call.body)
    assert set(sent) == {"person_image", "clothing_images", "place_image"}
    assert len(sent["clothing_images"]) == 2
    assert all(u.startswith("http") for u in [sent["person_image"], *sent["clothing_images"]])
    assert len(call.body) < 8000  # references, not pixels
    assert call.headers["Content-Type"] == "application/json"
    assert call.headers["X-Amzn-SageMaker-Inference-Id"] == ctx.job_id
    assert result["mode"] == "sync" and result["status"] == "success"
    assert result["imageUrl"] == result["images"][0]["url"]
    out = decode(ctx.stored[0].data).convert("RGB")
    assert out.getpixel((5, 5)) == PLACE
    assert out.getpixel((80, 50)) == PERSON
    assert [out.getpixel((i * 20 + 10, 110)) for i in range(2)] == CLOTHES


async def test_an_image_answer_and_s3_uris_when_so_configured(
    start: Start, runtime: FakeSageMakerRuntime, http: aiohttp.ClientSession, s3: Any, bucket: str
) -> None:
    async def model(body: bytes, content_type: str, accept: str) -> Reply:
        request = json.loads(body)
        assert request["images"]["person"].startswith(f"s3://{bucket}/compose/inputs/")
        key = request["images"]["person"].removeprefix(f"s3://{bucket}/")
        person = await (await s3.get_object(Bucket=bucket, Key=key))["Body"].read()
        assert request["seed"] == 7 and request["text"].endswith("red scarf")
        return Reply(person, "image/png")

    runtime.add(Endpoint("custom", model))
    template = {
        "images": {
            "person": "$person_image",
            "garments": "$clothing_images",
            "scene": "$place_image",
        },
        "text": "$instruction",
        "seed": "$seed",
        "size": ["$width", "$height"],
    }
    handler = await start(
        endpoint_name="custom", image_encoding="s3", request_template=template, accept="image/png"
    )
    ctx = FakeJobContext(kind="compose")
    result = await handler.run(job(prompt="red scarf", seed=7), ctx)
    assert decode(ctx.stored[0].data).convert("RGB").getpixel((0, 0)) == PERSON
    assert result["ignored_inputs"] == []
    assert runtime.calls("InvokeEndpoint")[0].headers["Accept"] == "image/png"


async def test_a_body_over_six_megabytes_goes_through_s3_to_the_async_endpoint(
    start: Start, runtime: FakeSageMakerRuntime, bucket: str
) -> None:
    seen: list[dict[str, Any]] = []

    async def model(body: bytes, content_type: str, accept: str) -> Reply:
        seen.append(json.loads(body))
        person = base64.b64decode(seen[-1]["person_image"])
        return Reply(json.dumps({"imageUrl": base64.b64encode(person).decode()}).encode())

    runtime.add(Endpoint("realtime", model))
    runtime.add(
        Endpoint("queued", model, asynchronous=True, output_path=f"s3://{bucket}/async-out")
    )
    handler = await start(
        endpoint_name="realtime", async_endpoint_name="queued", image_encoding="base64"
    )
    # Noise does not compress: 1400² RGB is about 5.9 MB of PNG, 7.8 MB in base64.
    noise = Image.frombytes("RGB", (1400, 1400), os.urandom(1400 * 1400 * 3))
    buffer = io.BytesIO()
    noise.save(buffer, format="PNG", compress_level=1)
    params = job()
    params.person_image = data_uri(buffer.getvalue())
    ctx = FakeJobContext(kind="compose")

    result = await handler.run(params, ctx)

    assert runtime.calls("InvokeEndpoint") == []  # never sent over the limit
    (call,) = runtime.calls("InvokeEndpointAsync")
    assert call.body == b""
    assert call.headers["X-Amzn-SageMaker-InputLocation"] == (
        f"s3://{bucket}/compose/async-inputs/{ctx.job_id}.json"
    )
    assert result["mode"] == "async" and result["request_bytes"] > 6_291_456
    assert result["output_location"].startswith(f"s3://{bucket}/async-out/")
    assert decode(ctx.stored[0].data).size == (1400, 1400)


async def test_a_model_timeout_moves_the_request_to_the_async_endpoint(
    start: Start, runtime: FakeSageMakerRuntime, http: aiohttp.ClientSession, bucket: str
) -> None:
    model = instantid_standin(http)

    async def slow(body: bytes, content_type: str, accept: str) -> Reply:
        return await model(body, content_type, accept)

    runtime.add(Endpoint("realtime", slow, model_time_limit_s=0.0))
    runtime.add(Endpoint("queued", model, asynchronous=True, output_path=f"s3://{bucket}/out"))
    handler = await start(endpoint_name="realtime", async_endpoint_name="queued")
    result = await handler.run(job(), FakeJobContext(kind="compose", http=http))
    assert result["mode"] == "async"
    assert len(runtime.calls("InvokeEndpoint")) == 1  # a timeout is not retried in place


async def test_an_async_failure_is_read_from_the_failure_location(
    start: Start, runtime: FakeSageMakerRuntime, bucket: str
) -> None:
    runtime.add(
        Endpoint(
            "queued",
            failing(400, "no face found in person_image"),
            asynchronous=True,
            output_path=f"s3://{bucket}/out",
            failure_path=f"s3://{bucket}/failed",
        )
    )
    handler = await start(async_endpoint_name="queued")
    with pytest.raises(PermanentJobError, match="no face found") as caught:
        await handler.run(job(), FakeJobContext(kind="compose"))
    assert f"s3://{bucket}/failed/" in caught.value.message


async def test_a_424_from_the_model_refusing_the_input_fails_at_once(
    start: Start, runtime: FakeSageMakerRuntime
) -> None:
    runtime.add(Endpoint("instantid", failing(400, "no face found in person_image")))
    metrics = RecordedMetrics()
    handler = await start(metrics=metrics, endpoint_name="instantid")
    with pytest.raises(PermanentJobError) as caught:
        await handler.run(job(), FakeJobContext(kind="compose"))
    assert caught.value.code == "sagemaker_model_error"
    assert "the model answered 400: no face found in person_image" in caught.value.message
    assert "log-group:/aws/sagemaker/Endpoints/instantid" in caught.value.message
    assert len(runtime.calls("InvokeEndpoint")) == 1  # nothing retried that cannot succeed
    assert metrics.provider_calls == [("sagemaker", "4xx", True)]


@pytest.mark.parametrize(
    ("status", "text", "kind"),
    [
        (503, "model is loading", TransientJobError),
        (500, "CUDA out of memory. Tried to allocate 2.00 GiB", TransientJobError),
        (500, "KeyError: 'face_embedding'", PermanentJobError),
    ],
)
async def test_a_424_is_transient_or_permanent_as_the_models_status_says(
    start: Start, runtime: FakeSageMakerRuntime, status: int, text: str, kind: type[Exception]
) -> None:
    runtime.add(Endpoint("instantid", failing(status, text)))
    handler = await start(endpoint_name="instantid")
    with pytest.raises(kind, match=f"answered {status}"):
        await handler.run(job(), FakeJobContext(kind="compose"))
    assert len(runtime.calls("InvokeEndpoint")) == 1


async def test_throttling_is_retried_with_backoff(
    start: Start, runtime: FakeSageMakerRuntime, http: aiohttp.ClientSession
) -> None:
    runtime.add(Endpoint("instantid", instantid_standin(http)))
    handler = await start(endpoint_name="instantid", retries=3)
    runtime.throttle_next, runtime.unavailable_next = 2, 1
    result = await handler.run(job(), FakeJobContext(kind="compose", http=http))
    assert result["status"] == "success"
    assert len(runtime.calls("InvokeEndpoint")) == 4


async def test_throttling_that_persists_is_transient(
    start: Start, runtime: FakeSageMakerRuntime, http: aiohttp.ClientSession
) -> None:
    runtime.add(Endpoint("instantid", instantid_standin(http)))
    handler = await start(endpoint_name="instantid", retries=2)
    runtime.throttle_next = 10
    with pytest.raises(TransientJobError, match="ThrottlingException"):
        await handler.run(job(), FakeJobContext(kind="compose", http=http))
    assert len(runtime.calls("InvokeEndpoint")) == 3


async def test_an_unknown_endpoint_is_a_permanent_failure_naming_it(
    start: Start, runtime: FakeSageMakerRuntime
) -> None:
    handler = await start(endpoint_name="nosuch")
    assert not handler.ready()  # the start-up check found no such endpoint in moto
    with pytest.raises(PermanentJobError, match=r"nosuch of account .* not found") as caught:
        await handler.run(job(), FakeJobContext(kind="compose"))
    assert caught.value.code == "sagemaker_endpoint_not_found"
    assert len(runtime.calls("InvokeEndpoint")) == 1


async def test_a_large_body_without_an_async_endpoint_fails_before_calling(
    start: Start, runtime: FakeSageMakerRuntime, http: aiohttp.ClientSession
) -> None:
    runtime.add(Endpoint("instantid", instantid_standin(http)))
    handler = await start(endpoint_name="instantid", image_encoding="base64")
    noise = Image.frombytes("RGB", (1400, 1400), os.urandom(1400 * 1400 * 3))
    buffer = io.BytesIO()
    noise.save(buffer, format="PNG", compress_level=1)
    params = job()
    params.place_image = data_uri(buffer.getvalue())
    with pytest.raises(PermanentJobError, match="over the 6291456-byte limit"):
        await handler.run(params, FakeJobContext(kind="compose"))
    assert runtime.calls("InvokeEndpoint") == []


async def test_an_answer_saying_failure_is_a_permanent_failure(
    start: Start, runtime: FakeSageMakerRuntime
) -> None:
    async def model(body: bytes, content_type: str, accept: str) -> Reply:
        return Reply(json.dumps({"status": "error", "message": "clothing not detected"}).encode())

    runtime.add(Endpoint("instantid", model))
    handler = await start(endpoint_name="instantid")
    with pytest.raises(PermanentJobError, match="status='error': clothing not detected"):
        await handler.run(job(), FakeJobContext(kind="compose"))


async def test_an_unreadable_clothing_image_fails_naming_it_before_any_call(
    start: Start, runtime: FakeSageMakerRuntime
) -> None:
    runtime.add(Endpoint("instantid", failing(500, "unused")))
    handler = await start(endpoint_name="instantid")
    params = job()
    params.clothing_images[1] = data_uri(image_bytes(PERSON)[:60])  # a truncated PNG
    with pytest.raises(PermanentJobError, match=r"clothing_images\[1\]: not a readable image"):
        await handler.run(params, FakeJobContext(kind="compose"))
    assert runtime.requests == []
