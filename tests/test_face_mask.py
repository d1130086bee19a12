"""face_mask on real photos: where the mask lands, and the errors a user sees."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from support import submit, wait_for

from shortdrama_worker.contract import FaceBox, order_faces
from shortdrama_worker.faces.local import LocalFaceDetector
from shortdrama_worker.handlers.face_mask import FaceMaskHandler
from shortdrama_worker.plugins import HandlerRegistry

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "face.png"


def data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def two_faces() -> Image.Image:
    """Two copies of the sample face side by side, the right one smaller."""
    face = Image.open(SAMPLE).convert("RGB").crop((130, 20, 330, 230))
    canvas = Image.new("RGB", (600, 260), "white")
    canvas.paste(face.resize((150, 158)), (420, 40))
    canvas.paste(face, (20, 20))
    return canvas


def test_faces_are_numbered_left_to_right() -> None:
    faces = [FaceBox(300, 0, 50, 50, 0.99), FaceBox(10, 5, 80, 80, 0.99)]
    assert [f.x for f in order_faces(faces)] == [10, 300]


async def test_detector_finds_both_faces_in_order() -> None:
    faces = await LocalFaceDetector().detect(two_faces())
    assert len(faces) == 2
    assert faces[0].x < 250 < faces[1].x


async def test_large_frames_are_detected_at_full_scale_coordinates() -> None:
    big = Image.open(SAMPLE).convert("RGB").resize((2048, 2048))
    [face] = await LocalFaceDetector(detect_max_side=512).detect(big)
    # Scaled back to the 2048² frame: the face sits around x≈890, y≈470.
    assert 700 < face.x + face.width / 2 < 1100
    assert 300 < face.y + face.height / 2 < 650


async def test_face_index_picks_the_second_face(make_settings: Any, start_app: Any) -> None:
    registry = HandlerRegistry.from_classes({"face_mask": FaceMaskHandler})
    _, client = await start_app(make_settings(), registry)
    job_id = await submit(
        client, "face-mask", {"image_url": data_uri(two_faces()), "face_index": 1}
    )
    job = await wait_for(client, job_id)
    assert job["status"] == "completed", job
    assert job["result"]["faces_found"] == 2
    assert job["result"]["face_box"]["x"] > 400


async def test_no_face_fails_with_no_face_found(make_settings: Any, start_app: Any) -> None:
    registry = HandlerRegistry.from_classes({"face_mask": FaceMaskHandler})
    _, client = await start_app(make_settings(), registry)
    blank = Image.new("RGB", (320, 240), "gray")
    job = await wait_for(client, await submit(client, "face-mask", {"image_url": data_uri(blank)}))
    assert job["status"] == "failed"
    assert job["error_message"] == "no face found"
    assert job["attempts"] == 1


async def test_face_index_out_of_range_is_a_clear_error(make_settings: Any, start_app: Any) -> None:
    registry = HandlerRegistry.from_classes({"face_mask": FaceMaskHandler})
    _, client = await start_app(make_settings(), registry)
    sample = Image.open(SAMPLE).convert("RGB")
    job_id = await submit(client, "face-mask", {"image_url": data_uri(sample), "face_index": 3})
    job = await wait_for(client, job_id)
    assert job["status"] == "failed"
    assert job["error_message"] == "face_index 3 is out of range: 1 face(s) found (valid: 0–0)"


async def test_the_qwen_vl_detector_masks_the_face_the_model_found(
    make_settings: Any, start_app: Any
) -> None:
    from fakes.dashscope import FakeDashScope

    # The model lists the right-hand face first; face_index still counts from the left.
    right, left = (0.60, 0.20, 0.75, 0.55), (0.15, 0.25, 0.30, 0.60)
    async with FakeDashScope(faces=[right, left]) as fake:
        section = {
            "detector": "qwen_vl",
            "dashscope": {"base_url": fake.base_url, "api_key": fake.api_key},
        }
        settings = make_settings(handlers={"options": {"face_mask": section}})
        registry = HandlerRegistry.from_classes({"face_mask": FaceMaskHandler})
        _, client = await start_app(settings, registry)
        frame = Image.new("RGB", (1600, 900), (90, 140, 200))
        payload = {"image_url": data_uri(frame), "face_index": 1}
        job = await wait_for(client, await submit(client, "face-mask", payload))
    assert job["status"] == "completed", job
    result = job["result"]
    assert result["detector"] == "qwen_vl"
    assert result["provenance"]["detector"]["provider"] == "dashscope"
    assert result["usage"]["dashscope"]["total_tokens"] > 0
    assert result["faces_found"] == 2
    assert result["face_box"]["x"] == pytest.approx(0.60 * 1600, abs=30)
    health = await (await client.get("/health")).json()
    assert health["checks"]["dashscope"] == "healthy"


async def test_a_job_may_not_pick_another_detector_unless_allowed(
    make_settings: Any, start_app: Any
) -> None:
    registry = HandlerRegistry.from_classes({"face_mask": FaceMaskHandler})
    _, client = await start_app(make_settings(), registry)
    sample = Image.open(SAMPLE).convert("RGB")
    payload = {"image_url": data_uri(sample), "detector": "qwen_vl"}
    job = await wait_for(client, await submit(client, "face-mask", payload))
    assert job["status"] == "failed"
    assert job["error"]["code"] == "detector_not_allowed"
    assert job["error_message"].startswith("detector: this worker uses the 'local' detector")
