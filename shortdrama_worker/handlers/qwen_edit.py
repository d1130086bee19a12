"""``qwen_edit``: edit one to three images with an instruction (Qwen-Image-Edit-2509).

The images feed ``TextEncodeQwenImageEditPlus`` as image1..image3 (the model
sees them as "Picture 1..3"); the output takes image 1's framing, or the
requested size (center crop after a Qwen-friendly rescale).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, Field

from shortdrama_worker.contract import HandlerInput, JobContext, Provenance
from shortdrama_worker.contract.fields import ImageRef
from shortdrama_worker.handlers.comfy_common import MAX_SEED, ComfyHandler, ImageInput

MAX_IMAGES = 3


class QwenEditInput(HandlerInput):
    """Images, an instruction and sampler settings."""

    images: list[ImageRef] = Field(
        min_length=1,
        max_length=MAX_IMAGES,
        description="1-3 images (https://, s3://bucket/key or data:image/...;base64,); "
        "the first one is edited, the others are references.",
    )
    prompt: str = Field(
        min_length=1,
        max_length=2000,
        description='The edit, e.g. "Replace the cat with a dalmatian".',
    )
    negative_prompt: str = Field(default="", max_length=2000, description="What to avoid.")
    seed: int | None = Field(
        default=None,
        ge=0,
        le=MAX_SEED,
        description="Sampler seed; derived from the job id if unset.",
    )
    steps: int | None = Field(
        default=None, ge=1, le=100, description="Sampler steps (default 20, or 4 with Lightning)."
    )
    cfg: float | None = Field(
        default=None, ge=0.0, le=20.0, description="CFG scale (default 2.5, or 1.0 with Lightning)."
    )
    lightning: bool = Field(default=False, description="Use the 4-step Lightning LoRA.")
    width: int | None = Field(
        default=None,
        ge=256,
        le=2048,
        multiple_of=16,
        description="Output width; with height unset, the aspect ratio is kept.",
    )
    height: int | None = Field(
        default=None,
        ge=256,
        le=2048,
        multiple_of=16,
        description="Output height; with width unset, the aspect ratio is kept.",
    )


class QwenEditHandler(ComfyHandler):
    """Instruction-based editing of 1-3 images with Qwen-Image-Edit-2509."""

    slug: ClassVar[str | None] = "qwen-image-edit"
    input_model: ClassVar[type[BaseModel]] = QwenEditInput
    description: ClassVar[str] = (
        "Edit an image with an instruction, optionally guided by up to two reference images "
        "(Qwen-Image-Edit-2509)."
    )
    default_workflow: ClassVar[str] = "qwen_edit"
    # The model redraws the whole image from the inputs: every pixel is generated.
    provenance: ClassVar[Provenance | None] = Provenance(
        action="c2pa.edited",
        source_type="trainedAlgorithmicMedia",
        model="Qwen-Image-Edit-2509",
        provider="comfyui",
        parent="images[0]",
        description="an image edited by instruction",
    )
    required_markers: ClassVar[frozenset[str]] = frozenset(
        {
            "image1",
            "image2",
            "image3",
            "prompt",
            "negative_prompt",
            "seed",
            "steps",
            "cfg",
            "width",
            "height",
            "lightning_strength",
        }
    )

    async def run(self, params: Any, ctx: JobContext) -> dict[str, Any]:
        """Upload the images, run the graph with unused image slots pruned, store the outputs."""
        if not isinstance(params, QwenEditInput):
            params = QwenEditInput.model_validate(params)
        seed = self.seed_for(params.seed, ctx)
        steps = params.steps or (4 if params.lightning else 20)
        cfg = params.cfg if params.cfg is not None else (1.0 if params.lightning else 2.5)
        values: dict[str, str | int | float | bool] = {
            "prompt": params.prompt,
            "negative_prompt": params.negative_prompt,
            "seed": seed,
            "steps": steps,
            "cfg": cfg,
            # ImageScale treats 0 as "keep": both 0 leaves the size alone.
            "width": params.width or 0,
            "height": params.height or 0,
            "lightning_strength": 1.0 if params.lightning else 0.0,
        }
        images = [
            ImageInput(f"image{i + 1}", ref, f"images[{i}]") for i, ref in enumerate(params.images)
        ]
        unused = [f"image{i + 1}" for i in range(len(images), MAX_IMAGES)]
        result = await self.execute(ctx, self.workflow, images=images, values=values, omit=unused)
        result.update(seed=seed, steps=steps, cfg=cfg, lightning=params.lightning)
        return result
