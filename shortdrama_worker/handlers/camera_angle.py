"""``comfy_camera_angle``: re-shoot one image from another camera position.

Runs Qwen-Image-Edit-2509 with the Multiple-angles LoRA
(``dx8152/Qwen-Edit-2509-Multiple-angles``) in ComfyUI. The LoRA was trained
on bilingual camera instructions, Chinese then English, e.g.
``将镜头向左旋转45度 Rotate the camera 45 degrees to the left.``; this handler
builds exactly those phrases from a named move, or passes a free instruction
through. The 4-step Lightning LoRA is on by default (4 steps, CFG 1); turning
it off uses the model's own schedule (20 steps, CFG 2.5).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, model_validator

from shortdrama_worker.contract import HandlerInput, JobContext, Provenance
from shortdrama_worker.contract.fields import ImageRef
from shortdrama_worker.handlers.comfy_common import MAX_SEED, ComfyHandler, ImageInput

CameraMove = Literal[
    "rotate_left",
    "rotate_right",
    "move_forward",
    "close_up",
    "wide_angle",
    "birds_eye",
    "worms_eye",
]

# Phrases as the LoRA's training captions and its reference Spaces spell them.
_FIXED_PHRASES: dict[str, str] = {
    "move_forward": "将镜头向前移动 Move the camera forward.",
    "close_up": "将镜头转为特写镜头 Turn the camera to a close-up.",
    "wide_angle": "将镜头转为广角镜头 Turn the camera to a wide-angle lens.",
    "birds_eye": "将相机转向鸟瞰视角 Turn the camera to a bird's-eye view.",
    "worms_eye": "将相机切换到仰视视角 Turn the camera to a worm's-eye view.",
}
DEFAULT_ROTATION = 45


def camera_instruction(move: str, degrees: int | None = None) -> str:
    """The bilingual instruction for a camera move (see the module docstring)."""
    if move in ("rotate_left", "rotate_right"):
        deg = DEFAULT_ROTATION if degrees is None else degrees
        if move == "rotate_left":
            return f"将镜头向左旋转{deg}度 Rotate the camera {deg} degrees to the left."
        return f"将镜头向右旋转{deg}度 Rotate the camera {deg} degrees to the right."
    return _FIXED_PHRASES[move]


class CameraAngleInput(HandlerInput):
    """One image and a camera move (or a free instruction)."""

    image: ImageRef = Field(
        description="The image to re-shoot: https://, s3://bucket/key or data:image/...;base64,"
    )
    move: CameraMove | None = Field(
        default=None,
        description="A named camera move; exactly one of move and instruction is given.",
    )
    degrees: int | None = Field(
        default=None,
        ge=1,
        le=180,
        description=f"Rotation for rotate_left/rotate_right (default {DEFAULT_ROTATION}).",
    )
    instruction: str | None = Field(
        default=None,
        min_length=1,
        max_length=1000,
        description="A free camera instruction, used as is (best in the LoRA's bilingual form).",
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        le=MAX_SEED,
        description="Sampler seed; derived from the job id if unset.",
    )
    steps: int | None = Field(
        default=None, ge=1, le=100, description="Sampler steps (default 4 with Lightning, else 20)."
    )
    cfg: float | None = Field(
        default=None,
        ge=0.0,
        le=20.0,
        description="CFG scale (default 1.0 with Lightning, else 2.5).",
    )
    lora_strength: float = Field(
        default=1.25, ge=0.0, le=2.0, description="Strength of the Multiple-angles LoRA."
    )
    lightning: bool = Field(default=True, description="Use the 4-step Lightning LoRA.")

    @model_validator(mode="after")
    def _one_instruction(self) -> CameraAngleInput:
        if (self.move is None) == (self.instruction is None):
            raise ValueError("give exactly one of move and instruction")
        if self.degrees is not None and self.move not in ("rotate_left", "rotate_right"):
            raise ValueError("degrees only applies to rotate_left and rotate_right")
        return self

    def prompt(self) -> str:
        if self.move is not None:
            return camera_instruction(self.move, self.degrees)
        assert self.instruction is not None
        return self.instruction


class CameraAngleHandler(ComfyHandler):
    """Change the camera angle of an image (Qwen-Image-Edit-2509 + Multiple-angles LoRA)."""

    slug: ClassVar[str | None] = "camera-angle"
    input_model: ClassVar[type[BaseModel]] = CameraAngleInput
    description: ClassVar[str] = (
        "Re-shoot an image from another camera position: rotate, move forward, close-up, "
        "wide-angle, bird's-eye, worm's-eye, or a free instruction."
    )
    default_workflow: ClassVar[str] = "camera_angle"
    # The model redraws the whole frame from the input: every pixel is generated.
    provenance: ClassVar[Provenance | None] = Provenance(
        action="c2pa.edited",
        source_type="trainedAlgorithmicMedia",
        model="Qwen-Image-Edit-2509 + Multiple-angles LoRA",
        provider="comfyui",
        parent="image",
        description="the scene re-shot from another camera position",
    )
    required_markers: ClassVar[frozenset[str]] = frozenset(
        {"image", "prompt", "seed", "steps", "cfg", "lora_strength", "lightning_strength"}
    )

    async def run(self, params: Any, ctx: JobContext) -> dict[str, Any]:
        """Build the instruction, run the graph, store every output image."""
        if not isinstance(params, CameraAngleInput):
            params = CameraAngleInput.model_validate(params)
        seed = self.seed_for(params.seed, ctx)
        steps = params.steps or (4 if params.lightning else 20)
        cfg = params.cfg if params.cfg is not None else (1.0 if params.lightning else 2.5)
        prompt = params.prompt()
        values: dict[str, str | int | float | bool] = {
            "prompt": prompt,
            "seed": seed,
            "steps": steps,
            "cfg": cfg,
            "lora_strength": params.lora_strength,
            # Strength 0 makes ComfyUI skip the LoRA without loading it.
            "lightning_strength": 1.0 if params.lightning else 0.0,
        }
        result = await self.execute(
            ctx,
            self.workflow,
            images=[ImageInput("image", params.image, "image")],
            values=values,
        )
        result.update(
            instruction=prompt, seed=seed, steps=steps, cfg=cfg, lightning=params.lightning
        )
        return result
