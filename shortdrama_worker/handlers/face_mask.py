"""``face_mask``: black out one face with an ellipse; same size, PNG.

Faces are numbered left to right by the centre of their box
(``shortdrama_worker.faces.boxes.order_faces``); ``face_index`` picks one.
"""

from __future__ import annotations

import asyncio
import io
import time
from typing import Any

from PIL import Image
from pydantic import BaseModel, Field

from shortdrama_worker.errors import PermanentJobError
from shortdrama_worker.faces.boxes import FaceBox, FaceDetector
from shortdrama_worker.faces.local import LocalFaceDetector
from shortdrama_worker.faces.mask import draw_face_mask
from shortdrama_worker.handlers.base import Handler, HandlerInput, JobContext
from shortdrama_worker.handlers.fields import ImageRef


class FaceMaskInput(HandlerInput):
    image_url: ImageRef = Field(description="The frame: https://, s3:// or data:image/… URI.")
    face_index: int = Field(
        default=0, ge=0, le=64, description="Which face, counting from 0, left to right."
    )


class FaceMaskSettings(BaseModel):
    min_face_size: int = Field(default=40, ge=12, description="Smallest face, in detection pixels.")
    min_confidence: float = Field(default=0.9, gt=0, le=1)
    detect_max_side: int = Field(
        default=1024, ge=256, description="Frames are detected on a copy this large at most."
    )


def select_face(faces: list[FaceBox], index: int) -> FaceBox:
    """The face at ``index``, or a permanent error a user can act on."""
    if not faces:
        raise PermanentJobError("no face found", code="no_face")
    if index >= len(faces):
        raise PermanentJobError(
            f"face_index {index} is out of range: {len(faces)} face(s) found "
            f"(valid: 0–{len(faces) - 1})",
            code="face_index_out_of_range",
        )
    return faces[index]


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    # compress_level 1: masks are stored once and fetched a few times; the
    # default level costs ~4× the CPU for ~10 % smaller files.
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class FaceMaskHandler(Handler):
    resource = "cpu"
    input_model = FaceMaskInput
    settings_model = FaceMaskSettings
    timeout_s = 120.0
    description = "Black out one face (ellipse over the face, not the hair); PNG of the same size."

    detector: FaceDetector

    async def startup(self) -> None:
        s = self.env.settings
        assert isinstance(s, FaceMaskSettings)
        local = LocalFaceDetector(
            min_face_size=s.min_face_size,
            min_confidence=s.min_confidence,
            detect_max_side=s.detect_max_side,
        )
        await asyncio.to_thread(local.warm_up)
        self.detector = local

    async def run(self, params: FaceMaskInput, ctx: JobContext) -> dict[str, Any]:
        timings: dict[str, float] = {}
        started = time.perf_counter()
        image = await ctx.fetch_image(params.image_url, field="image_url")
        timings["fetch_decode_s"] = time.perf_counter() - started
        await ctx.progress(20, "detecting")

        started = time.perf_counter()
        faces = await self.detector.detect(image)
        timings["detect_s"] = time.perf_counter() - started
        face = select_face(faces, params.face_index)
        await ctx.progress(60, "masking")

        started = time.perf_counter()
        png = await asyncio.to_thread(lambda: encode_png(draw_face_mask(image, face)))
        timings["draw_encode_s"] = time.perf_counter() - started

        stored = await ctx.store_result(png, content_type="image/png", name="mask.png")
        return {
            "face_box": face.as_dict(),
            "face_index": params.face_index,
            "faces_found": len(faces),
            "detector": self.detector.name,
            "width": image.width,
            "height": image.height,
            "image_url": stored.url,
            "timings": {k: round(v, 4) for k, v in timings.items()},
        }
