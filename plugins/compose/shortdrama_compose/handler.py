"""``compose``: a person wearing given clothing in a given place.

One kind, two back ends chosen in the settings: ComfyUI on the worker's own
GPU (Qwen-Image-Edit-2509 with the person, a collage of the clothing and the
place as its three reference images), or an existing SageMaker endpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel
from shortdrama_worker.contract import CONTRACT_VERSION, Handler, HandlerEnv, Health, JobContext

from shortdrama_compose.comfy_backend import ComfyBackend
from shortdrama_compose.model import ComposeInput, ComposeSettings
from shortdrama_compose.sm_backend import SageMakerBackend


class ComposeHandler(Handler[ComposeInput, ComposeSettings]):
    """Person + clothing + place → one photorealistic image."""

    contract_version = CONTRACT_VERSION
    slug: ClassVar[str | None] = "compose"
    resource = "gpu"
    input_model: ClassVar[type[BaseModel]] = ComposeInput
    settings_model: ClassVar[type[BaseModel]] = ComposeSettings
    # An asynchronous SageMaker inference may wait in the endpoint's queue.
    timeout_s: ClassVar[float] = 1800.0
    description: ClassVar[str] = (
        "Compose a photo of a person wearing the given clothing items in the given place "
        "(ComfyUI with Qwen-Image-Edit-2509, or an existing SageMaker endpoint)."
    )

    def __init__(self, env: HandlerEnv[ComposeSettings]) -> None:
        super().__init__(env)
        # Templates are checked here, so a bad one stops start-up naming the file.
        self.backend: ComfyBackend | SageMakerBackend = (
            SageMakerBackend(self.settings, env)
            if self.settings.backend == "sagemaker"
            else ComfyBackend(self.settings, env)
        )

    async def startup(self) -> None:
        await self.backend.startup()

    async def shutdown(self) -> None:
        await self.backend.shutdown()

    async def health(self) -> Mapping[str, Health]:
        healthy = await self.backend.healthy()
        return {self.settings.backend: "healthy" if healthy else "degraded"}

    def ready(self) -> bool:
        backend = self.backend
        return backend.ready() if isinstance(backend, SageMakerBackend) else backend.reachable

    async def run(self, params: ComposeInput, ctx: JobContext) -> dict[str, Any]:
        return await self.backend.run(params, ctx)
