"""The job API as clients see it: routes, validation, idempotency, errors."""

from __future__ import annotations

import asyncio
import base64
import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from support import ScriptedHandler, submit, wait_for

from shortdrama_worker import keys
from shortdrama_worker.handlers.face_mask import FaceMaskHandler
from shortdrama_worker.plugins import HandlerRegistry

JSON = {"Content-Type": "application/json"}
SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "face.png"


def registry() -> HandlerRegistry:
    return HandlerRegistry.from_classes({"face_mask": FaceMaskHandler, "scripted": ScriptedHandler})


def data_uri(image: Image.Image, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    mime = "image/png" if fmt == "PNG" else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode()}"


@pytest.fixture
async def api(make_settings: Any, start_app: Any) -> Any:
    _, client = await start_app(make_settings(), registry())
    return client


async def test_face_mask_round_trip_leaves_a_masked_png_in_s3(api: Any) -> None:
    sample = Image.open(SAMPLE).convert("RGB")
    resp = await api.post("/api/v1/face-mask/jobs", json={"image_url": data_uri(sample)})
    assert resp.status == 202
    accepted = await resp.json()
    assert accepted["status"] == "pending"
    assert resp.headers["Location"].endswith(f"/api/v1/jobs/{accepted['job_id']}")

    job = await wait_for(api, accepted["job_id"])
    assert job["status"] == "completed", job
    assert job["result"]["faces_found"] == 1
    async with api.session.get(job["result_url"]) as result:
        assert result.status == 200
        assert result.headers["Content-Type"] == "image/png"
        masked = Image.open(io.BytesIO(await result.read())).convert("RGB")
    assert masked.size == sample.size
    box = job["result"]["face_box"]
    centre = (box["x"] + box["width"] // 2, box["y"] + box["height"] // 2)
    assert masked.getpixel(centre) == (0, 0, 0)
    # The astronaut's face is at (179-267, 60-174) in the NASA photo.
    assert 170 < centre[0] < 280 and 60 < centre[1] < 180
    # Hair above the box and the rest of the frame are untouched.
    hair = (centre[0], max(0, box["y"] - 15))
    assert masked.getpixel(hair) == sample.getpixel(hair)
    assert masked.getpixel((20, 400)) == sample.getpixel((20, 400))


async def test_legacy_task_routes_serve_the_same_job(api: Any) -> None:
    resp = await api.post("/api/v1/scripted/tasks", json={})
    assert resp.status == 202
    task_id = (await resp.json())["task_id"]
    job = await wait_for(api, task_id)
    legacy = await (await api.get(f"/api/v1/tasks/{task_id}")).json()
    assert legacy["task_id"] == job["job_id"] == task_id
    assert legacy["status"] == "completed"
    assert isinstance(legacy["created_at"], float)


async def test_idempotency_key_returns_the_same_job(api: Any) -> None:
    headers = {"Idempotency-Key": "frame-0042"}
    first = await api.post("/api/v1/scripted/jobs", json={}, headers=headers)
    second = await api.post("/api/v1/scripted/jobs", json={}, headers=headers)
    assert first.status == second.status == 202
    assert "Idempotent-Replayed" not in first.headers
    assert second.headers["Idempotent-Replayed"] == "true"
    assert (await first.json())["job_id"] == (await second.json())["job_id"]
    other = await api.post("/api/v1/scripted/jobs", json={"sleep_s": 1}, headers=headers)
    assert other.status == 422
    assert "Idempotency-Key" in (await other.json())["error"]["message"]


async def test_unknown_kind_is_404_with_the_available_slugs(api: Any) -> None:
    resp = await api.post("/api/v1/clothes-off/jobs", json={})
    assert resp.status == 404
    body = await resp.json()
    assert body["error"]["code"] == "unknown_kind"
    assert "face-mask" in body["error"]["available"]


async def test_malformed_json_is_400(api: Any) -> None:
    resp = await api.post("/api/v1/face-mask/jobs", data=b"{not json", headers=JSON)
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "malformed_json"


async def test_schema_errors_are_422_naming_each_field(api: Any) -> None:
    resp = await api.post(
        "/api/v1/face-mask/jobs",
        json={"image_url": "ftp://example.com/a.png", "face_index": -1, "colour": "red"},
    )
    assert resp.status == 422
    fields = {e["field"]: e["message"] for e in (await resp.json())["error"]["fields"]}
    assert set(fields) == {"image_url", "face_index", "colour"}
    assert "unsupported scheme 'ftp'" in fields["image_url"]


async def test_missing_required_field_is_422(api: Any) -> None:
    resp = await api.post("/api/v1/face-mask/jobs", json={})
    assert resp.status == 422
    assert (await resp.json())["error"]["fields"][0]["field"] == "image_url"


async def test_invalid_base64_data_uri_is_422_naming_the_field(api: Any) -> None:
    resp = await api.post("/api/v1/face-mask/jobs", json={"image_url": "data:image/png;base64,@@@"})
    assert resp.status == 422
    assert "image_url" in (await resp.json())["error"]["message"]


async def test_body_over_the_limit_is_413(make_settings: Any, start_app: Any) -> None:
    _, client = await start_app(make_settings(api={"max_body_bytes": 4096}), registry())
    resp = await client.post("/api/v1/face-mask/jobs", data=b"x" * 10_000, headers=JSON)
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "body_too_large"


async def test_unknown_job_is_404(api: Any) -> None:
    resp = await api.get("/api/v1/jobs/does-not-exist")
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"


async def test_failed_send_leaves_no_half_written_job(
    make_settings: Any, start_app: Any, aws: Any
) -> None:
    settings = make_settings()
    app, client = await start_app(settings, registry())
    # The queue disappears after start-up: SendMessage fails after PutItem.
    await aws.sqs.delete_queue(QueueUrl=app[keys.QUEUE].url("cpu"))
    resp = await client.post("/api/v1/scripted/jobs", json={})
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "queue_unavailable"
    scan = await aws.dynamodb.scan(TableName=settings.store.table)
    assert [item for item in scan["Items"] if "job_type" in item] == []


async def test_handlers_lists_kinds_with_schema(api: Any) -> None:
    body = await (await api.get("/api/v1/handlers")).json()
    by_kind = {h["kind"]: h for h in body["handlers"]}
    assert by_kind["face_mask"]["slug"] == "face-mask"
    assert by_kind["face_mask"]["resource"] == "cpu"
    assert "image_url" in by_kind["face_mask"]["input_schema"]["properties"]


async def test_openapi_describes_every_submit_route(api: Any) -> None:
    doc = await (await api.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.")
    post = doc["paths"]["/api/v1/face-mask/jobs"]["post"]
    ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert schema["required"] == ["image_url"]
    assert "/api/v1/jobs/{job_id}" in doc["paths"]


async def test_health_ready_and_metrics(api: Any) -> None:
    health = await (await api.get("/health")).json()
    assert health["status"] == "healthy"
    assert health["checks"]["dynamodb"] == "healthy"
    assert (await api.get("/ready")).status == 200
    job_id = await submit(api, "scripted", {})
    await wait_for(api, job_id)
    finished = 'shortdrama_jobs_finished_total{kind="scripted",outcome="completed"} 1.0'
    # The counter moves once the message is deleted, just after the status is visible.
    for _ in range(100):
        text = await (await api.get("/metrics")).text()
        if finished in text:
            break
        await asyncio.sleep(0.02)
    assert finished in text
    assert "shortdrama_job_duration_seconds_bucket" in text
    assert "shortdrama_gpu_slots 1.0" in text


async def test_results_use_the_cdn_domain_when_configured(
    make_settings: Any, start_app: Any
) -> None:
    settings = make_settings(results={"cdn_domain": "cdn.example.com"})
    _, client = await start_app(settings, registry())
    job = await wait_for(client, await submit(client, "scripted", {}))
    assert job["result_url"].startswith("https://cdn.example.com/results/scripted/")
    assert job["result_url"].endswith("/out.txt")
