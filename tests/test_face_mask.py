"""face_mask on real photos: where the mask lands, and the errors a user sees."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

from PIL import Image
from support import submit, wait_for

from shortdrama_worker.faces.boxes import FaceBox, order_faces
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
