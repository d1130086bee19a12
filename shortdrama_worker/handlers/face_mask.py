"""``face_mask``: black out one face with an ellipse; same size, PNG.

Faces are numbered left to right by the centre of their box
(``shortdrama_worker.faces.boxes.order_faces``); ``face_index`` picks one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from pydantic import Field

from shortdrama_worker.contract import (
    CONTRACT_VERSION,
    FaceBox,
    Handler,
    HandlerEnv,
    HandlerInput,
    Health,
    JobContext,
    Provenance,
)
from shortdrama_worker.contract.errors import PermanentJobError
from shortdrama_worker.contract.fields import ImageRef
from shortdrama_worker.faces.choice import DetectorName, Detectors, DetectorSettings
from shortdrama_worker.faces.mask import draw_face_mask
from shortdrama_worker.png import encode_png


class FaceMaskInput(HandlerInput):
    image_url: ImageRef = Field(description="The frame: https://, s3:// or data:image/… URI.")
    face_index: int = Field(
        default=0, ge=0, le=64, description="Which face, counting from 0, left to right."
    )
    detector: DetectorName | None = Field(
        default=None,
        description="Face detector for this job; only honoured where the worker allows "
        "choosing it (allow_detector_choice), otherwise its configured one is used.",
    )


class FaceMaskSettings(DetectorSettings):
    """``[handlers.options.face_mask]``: the detector (local by default) and its settings."""


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


class FaceMaskHandler(Handler[FaceMaskInput, FaceMaskSettings]):
    contract_version = CONTRACT_VERSION
    resource = "cpu"
    input_model = FaceMaskInput
    settings_model = FaceMaskSettings
    timeout_s = 120.0
    # The same frame and settings give the same mask: a repeat is answered
    # from the earlier result (see ``reuse``).
    deterministic = True
    description = "Black out one face (ellipse over the face, not the hair); PNG of the same size."
    # Drawn, not generated: the detector finds the face, no model makes pixels.
    provenance = Provenance(
        action="c2pa.edited", parent="image_url", description="one face blacked out"
    )

    def __init__(self, env: HandlerEnv[FaceMaskSettings]) -> None:
        super().__init__(env)
        self.detectors = Detectors(env.settings, env)

    async def startup(self) -> None:
        await self.detectors.startup()

    async def health(self) -> dict[str, Health]:
        return self.detectors.health()

    async def run(self, params: FaceMaskInput, ctx: JobContext) -> dict[str, Any]:
        timings: dict[str, float] = {}
        started = time.perf_counter()
        image = await ctx.fetch_image(params.image_url, field="image_url")
        timings["fetch_decode_s"] = time.perf_counter() - started
        await ctx.progress(20, "detecting")

        started = time.perf_counter()
        detection = await self.detectors.detect(
            self.detectors.choose(params.detector), image, ctx, field="image_url"
        )
        timings["detect_s"] = time.perf_counter() - started
        faces = detection.faces
        face = select_face(faces, params.face_index)
        await ctx.progress(60, "masking")

        started = time.perf_counter()
        png = await asyncio.to_thread(lambda: encode_png(draw_face_mask(image, face)))
        timings["draw_encode_s"] = time.perf_counter() - started

        stored = await ctx.store_result(
            png,
            content_type="image/png",
            name="mask.png",
            provenance=dataclasses.replace(
                self.provenance, details={"detector": str(detection.info["name"])}
            ),
        )
        return {
            "face_box": face.as_dict(),
            "face_index": params.face_index,
            "faces_found": len(faces),
            "detector": detection.info["name"],
            "provenance": {"detector": detection.info},
            "usage": {"dashscope": detection.usage} if detection.usage else {},
            "width": image.width,
            "height": image.height,
            "image_url": stored,
            "timings": {k: round(v, 4) for k, v in timings.items()},
        }
