"""``full_face_swap``: find a face, mask it, and swap it through Seedream, in one job.

Stages (reported as progress): fetching → detecting → masking → generating →
storing. The masked image exactly as sent to Seedream is stored too
(non-primary) and linked in the result, so an editor can see what the model
was asked to fill. Faces are numbered left to right (``order_faces``), the same
with either detector.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from pydantic import Field

from shortdrama_worker.contract import (
    CONTRACT_VERSION,
    ConsentAttestation,
    Handler,
    HandlerEnv,
    HandlerInput,
    Health,
    JobContext,
    Provenance,
)
from shortdrama_worker.contract.fields import ImageRef
from shortdrama_worker.faces.choice import DetectorName, Detectors, DetectorSettings
from shortdrama_worker.faces.mask import draw_face_mask
from shortdrama_worker.handlers.face_mask import select_face
from shortdrama_worker.handlers.face_swap import (
    DEFAULT_SWAP_PROMPT,
    SWAP_PROVENANCE,
    FaceSwapper,
    OutputSize,
    extension,
    image_record,
    input_record,
)
from shortdrama_worker.providers.seedream import SeedreamClient, SeedreamSettings


class FullFaceSwapInput(HandlerInput):
    source_image: ImageRef = Field(
        description="The frame with the face to replace: https://, s3:// or data:image/… URI."
    )
    target_face: ImageRef = Field(
        description="A clear photo of the face to put there (one person, facing the camera)."
    )
    target_face_consent: ConsentAttestation = Field(
        description="Required: the release of the person whose face target_face shows, and "
        "who attests it. Recorded on the job and in the result's signed Content Credentials."
    )
    face_index: int = Field(
        default=0, ge=0, le=64, description="Which face to replace, counting from 0, left to right."
    )
    size: OutputSize = "auto"
    watermark: bool | None = Field(
        default=None,
        description="Add the provider's 'AI generated' mark; unset uses the worker's setting "
        "(on unless the operator turned it off). The result states whether it was added.",
    )
    detector: DetectorName | None = Field(
        default=None,
        description="Face detector for this job; only honoured where the worker allows "
        "choosing it (allow_detector_choice), otherwise its configured one is used.",
    )


# The mask is drawn, not generated: an edit of the source with no model pixels.
MASK_PROVENANCE = Provenance(
    action="c2pa.edited", parent="source_image", description="the face to replace blacked out"
)


class FullFaceSwapSettings(DetectorSettings):
    """``[handlers.options.full_face_swap]``."""

    ark: SeedreamSettings = Field(default_factory=SeedreamSettings)
    watermark: bool = Field(default=True, description="Default for jobs that do not say.")
    prompt: str = Field(default=DEFAULT_SWAP_PROMPT, min_length=20, max_length=4000)


class FullFaceSwapHandler(Handler[FullFaceSwapInput, FullFaceSwapSettings]):
    """Detect → mask → Seedream swap, with the mask kept next to the result."""

    contract_version = CONTRACT_VERSION
    slug = "full-face-swap"
    resource = "cpu"
    input_model = FullFaceSwapInput
    settings_model = FullFaceSwapSettings
    timeout_s = 960.0
    provenance = dataclasses.replace(SWAP_PROVENANCE, parent="source_image")
    description = (
        "Replace one face of a frame with the target face: detect, mask, then Seedream. "
        "Stores the masked image too and links it in the result."
    )

    def __init__(self, env: HandlerEnv[FullFaceSwapSettings]) -> None:
        super().__init__(env)
        self.config = c = env.settings
        self.seedream = SeedreamClient(
            c.ark,
            http=env.service_http,
            metrics=env.metrics,
            log=env.log,
            config_hint=f"handlers.options.{env.kind}.ark.api_key",
        )
        self.swapper = FaceSwapper(self.seedream, c.prompt)
        self.detectors = Detectors(c, env)

    async def startup(self) -> None:
        await self.detectors.startup()

    async def health(self) -> dict[str, Health]:
        """``ark`` and, when the paid detector may be used, ``dashscope``."""
        checks: dict[str, Health] = {
            "ark": "healthy" if self.seedream.provider.healthy else "degraded"
        }
        return {**checks, **self.detectors.health()}

    async def run(self, params: FullFaceSwapInput, ctx: JobContext) -> dict[str, Any]:
        p = params
        detector = self.detectors.choose(p.detector)
        watermark = self.config.watermark if p.watermark is None else p.watermark

        await ctx.progress(5, "fetching")
        source, target = await asyncio.gather(
            ctx.fetch_image(p.source_image, field="source_image"),
            ctx.fetch_image(p.target_face, field="target_face"),
        )

        await ctx.progress(15, "detecting")
        detection = await self.detectors.detect(detector, source, ctx, field="source_image")
        faces, detector_info = detection.faces, detection.info
        usage: dict[str, dict[str, Any]] = {}
        if detection.usage is not None:
            usage["dashscope"] = detection.usage
        face = select_face(faces, p.face_index)

        await ctx.progress(30, "masking")
        masked_image = await asyncio.to_thread(draw_face_mask, source, face)
        masked, face_sent = await self.swapper.prepare(
            masked_image, target, masked_field="source_image", face_field="target_face"
        )
        # The mask exactly as Seedream receives it: what the model was asked to fill.
        mask_stored = await ctx.store_result(
            masked.data,
            content_type=masked.content_type,
            name="masked.jpg",
            primary=False,
            provenance=MASK_PROVENANCE,
        )

        await ctx.progress(40, "generating")
        swap = await self.swapper.swap(
            masked,
            face_sent,
            source_size=source.size,
            size=p.size,
            watermark=watermark,
            log=ctx.log,
        )
        usage["ark"] = {**swap.image.usage, "model": swap.image.model}

        await ctx.progress(90, "storing")
        stored = await ctx.store_result(
            swap.image.data,
            content_type=swap.image.content_type,
            name=f"full_face_swap.{extension(swap.image.content_type)}",
            provenance=self.swapper.signed_provenance(
                swap, parent="source_image", consent=p.target_face_consent
            ),
        )
        return {
            "image_url": stored,
            "image": image_record(stored, swap.image),
            "mask_url": mask_stored,
            "mask": {"url": mask_stored, "key": mask_stored.key},
            "face_index": p.face_index,
            "face_box": face.as_dict(),
            "faces_found": len(faces),
            "faces": [f.as_dict() for f in faces],
            "size": swap.size,
            "watermark": watermark,
            "consent": {"target_face": p.target_face_consent.model_dump()},
            "usage": usage,
            "provenance": {
                **self.swapper.provenance(swap),
                "detector": detector_info,
                "inputs": {
                    "source_image": input_record(p.source_image, masked),
                    "target_face": input_record(p.target_face, face_sent),
                },
            },
        }
