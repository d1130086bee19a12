"""Which face detector a job uses: the configured one, or the job's pick where allowed.

Shared by ``face_mask`` and ``full_face_swap`` so both number faces the same
way and report the same provenance and usage.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from shortdrama_worker.contract import FaceBox, HandlerEnv, Health, JobContext
from shortdrama_worker.contract.errors import InputError
from shortdrama_worker.faces.local import LocalFaceDetector
from shortdrama_worker.faces.qwen_vl import QwenVLDetector
from shortdrama_worker.providers.dashscope import DashScopeClient, DashScopeSettings

DetectorName = Literal["local", "qwen_vl"]


class LocalDetectorSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_face_size: int = Field(default=40, ge=12, description="Smallest face, in detection pixels.")
    min_confidence: float = Field(default=0.9, gt=0, le=1)
    detect_max_side: int = Field(
        default=1024, ge=256, description="Frames are detected on a copy this large at most."
    )


class DetectorSettings(BaseModel):
    """The detector part of a face handler's settings section."""

    model_config = ConfigDict(extra="forbid")

    detector: DetectorName = Field(
        default="local", description="local (MTCNN, free) or qwen_vl (DashScope, paid)."
    )
    allow_detector_choice: bool = Field(
        default=False, description="Let a job pick its detector with the detector field."
    )
    local: LocalDetectorSettings = Field(default_factory=LocalDetectorSettings)
    dashscope: DashScopeSettings = Field(default_factory=DashScopeSettings)


@dataclass(frozen=True)
class Detection:
    faces: list[FaceBox]
    info: dict[str, Any]
    usage: dict[str, Any] | None = None
    """Provider units used, and the ``model`` that used them (for costs)."""


class Detectors:
    """The detectors a handler may use, built from its ``DetectorSettings``."""

    def __init__(self, config: DetectorSettings, env: HandlerEnv[Any]) -> None:
        self.config = config
        self.local = LocalFaceDetector(
            min_face_size=config.local.min_face_size,
            min_confidence=config.local.min_confidence,
            detect_max_side=config.local.detect_max_side,
        )
        self.dashscope = DashScopeClient(
            config.dashscope,
            http=env.service_http,
            metrics=env.metrics,
            log=env.log,
            config_hint=f"handlers.options.{env.kind}.dashscope.api_key",
        )
        self.qwen_vl = QwenVLDetector(self.dashscope, env.log)

    def uses(self, name: DetectorName) -> bool:
        return self.config.detector == name or self.config.allow_detector_choice

    async def startup(self) -> None:
        """Load the local detector now if it may be used, so a missing package stops start-up."""
        if self.uses("local"):
            await asyncio.to_thread(self.local.warm_up)

    def health(self) -> dict[str, Health]:
        """``dashscope`` when the paid detector may be used."""
        if not self.uses("qwen_vl"):
            return {}
        return {"dashscope": "healthy" if self.dashscope.provider.healthy else "degraded"}

    def choose(self, requested: DetectorName | None) -> DetectorName:
        if requested is None or requested == self.config.detector:
            return self.config.detector
        if not self.config.allow_detector_choice:
            raise InputError(
                "detector",
                f"this worker uses the {self.config.detector!r} detector and does not let "
                "jobs choose another; leave detector unset",
                code="detector_not_allowed",
            )
        return requested

    async def detect(
        self, name: DetectorName, image: Image.Image, ctx: JobContext, *, field: str
    ) -> Detection:
        """Faces, the detector's provenance, and its provider usage (paid detector only)."""
        if name == "qwen_vl":
            grounding = await self.qwen_vl.locate(image, field=field, log=ctx.log)
            info = {
                "name": self.qwen_vl.name,
                "provider": "dashscope",
                "model": grounding.model,
                "endpoint": self.dashscope.settings.base_url,
                "truncated_answer": grounding.truncated,
            }
            return Detection(
                faces=grounding.faces,
                info=info,
                usage={**grounding.usage, "model": grounding.model},
            )
        faces = await self.local.detect(image)
        return Detection(faces=faces, info={"name": self.local.name, "provider": "local"})
