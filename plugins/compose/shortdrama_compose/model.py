"""The job's input and the handler's settings.

The input takes the snake_case names of this project's other kinds and the
camelCase body of the system this replaces (``personImage``,
``clothingImages``, ``placeImage``), so its clients can switch by changing
the URL only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator
from shortdrama_worker.contract import ImageRef

MAX_CLOTHING = 6
"""Items laid out in one reference image before each becomes too small to recognise."""
MAX_SEED = 2**64 - 1  # KSampler's own bound
SYNC_PAYLOAD_LIMIT = 6_291_456
"""InvokeEndpoint's request body limit (6 MB)."""
ASYNC_INLINE_LIMIT = 128_000
"""InvokeEndpointAsync's inline body limit; larger inputs go through S3."""


def _alias(snake: str, camel: str) -> Any:
    return AliasChoices(snake, camel)


class ComposeInput(BaseModel):
    """A person, the clothing they should wear and the place they should stand in."""

    # Unknown fields are refused, as for every kind; both spellings are accepted.
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    person_image: ImageRef = Field(
        validation_alias=_alias("person_image", "personImage"),
        description="The person (face and body); https://, s3://bucket/key or data: URI.",
    )
    clothing_images: list[ImageRef] = Field(
        min_length=1,
        max_length=MAX_CLOTHING,
        validation_alias=_alias("clothing_images", "clothingImages"),
        description=f"1-{MAX_CLOTHING} clothing items (garments, shoes, accessories).",
    )
    place_image: ImageRef = Field(
        validation_alias=_alias("place_image", "placeImage"),
        description="The place the person should stand in.",
    )
    prompt: str | None = Field(
        default=None,
        max_length=2000,
        description="Extra instruction appended to the composition instruction.",
    )
    seed: int | None = Field(
        default=None, ge=0, le=MAX_SEED, description="Sampler seed; derived from the job id."
    )
    width: int | None = Field(
        default=None,
        ge=256,
        le=2048,
        multiple_of=16,
        description="Output width; unset: the place image's aspect ratio at about 1 megapixel.",
    )
    height: int | None = Field(
        default=None, ge=256, le=2048, multiple_of=16, description="Output height."
    )


class ComfySettings(BaseModel):
    """``[handlers.options.compose.comfyui]``: the ComfyUI back end."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(default="http://127.0.0.1:8188", pattern=r"^https?://")
    request_timeout_s: float = Field(default=30.0, gt=0)
    transfer_timeout_s: float = Field(default=120.0, gt=0, description="Uploads and downloads.")
    poll_interval_s: float = Field(
        default=5.0, gt=0, description="Check /history when the WebSocket is silent this long."
    )
    workflow_file: Path | None = Field(
        default=None, description="An API-format template of your own; unset: the packaged one."
    )
    upload_subfolder: str = Field(default="shortdrama", pattern=r"^[A-Za-z0-9_-]*$")
    lightning: bool = Field(default=False, description="Use the 4-step Lightning LoRA.")
    steps: int | None = Field(default=None, ge=1, le=100, description="Default 20 (4 Lightning).")
    cfg: float | None = Field(default=None, ge=0, le=20, description="Default 2.5 (1.0 Lightning).")
    negative_prompt: str = Field(default="", max_length=2000)
    collage_cell: int = Field(
        default=512, ge=128, le=1024, description="Side of one clothing item's cell in pixels."
    )


class SageMakerSettings(BaseModel):
    """``[handlers.options.compose.sagemaker]``: an existing SageMaker endpoint."""

    model_config = ConfigDict(extra="forbid")

    region: str = Field(default="us-east-1", pattern=r"^[a-z]{2}(-[a-z]+)+-\d+$")
    endpoint_name: str | None = Field(
        default=None,
        pattern=r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$",
        max_length=63,
        description="A real-time endpoint (InvokeEndpoint).",
    )
    async_endpoint_name: str | None = Field(
        default=None,
        pattern=r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$",
        max_length=63,
        description="An asynchronous endpoint (InvokeEndpointAsync) for large or slow requests.",
    )
    bucket: str = Field(
        min_length=3,
        max_length=63,
        description="The plugin's own bucket: staged inputs and async requests.",
    )
    prefix: str = Field(default="compose", pattern=r"^[A-Za-z0-9_./-]*[A-Za-z0-9_-]$")
    image_encoding: Literal["url", "s3", "base64"] = Field(
        default="url",
        description="How images reach the endpoint: presigned HTTPS URLs, s3:// URIs, or "
        "base64 in the body (small images only: the body is limited to 6 MB).",
    )
    presign_expiry_s: int = Field(default=3600, ge=60, le=7 * 24 * 3600)
    request_template: dict[str, Any] | None = Field(
        default=None, description="The endpoint's request body with $markers; unset: the seed's."
    )
    request_template_file: Path | None = None
    content_type: str = "application/json"
    accept: str = "application/json"
    response_image_field: str = Field(
        default="imageUrl",
        description="Dotted path of the image in a JSON answer (URL, s3:// URI or base64).",
    )
    response_status_field: str = "status"
    response_message_field: str = "message"
    response_ok_statuses: list[str] = Field(
        default_factory=lambda: ["success", "succeeded", "ok", "completed"]
    )
    sync_timeout_s: float = Field(
        default=70.0, gt=0, le=600, description="Read timeout; SageMaker gives the model 60 s."
    )
    async_invocation_timeout_s: int = Field(default=900, ge=1, le=1500)
    async_poll_interval_s: float = Field(default=2.0, gt=0, le=60)
    max_concurrent_invocations: int = Field(default=2, ge=1, le=64)
    retries: int = Field(default=4, ge=0, le=10, description="On throttling and 5xx, per call.")
    backoff_base_s: float = Field(default=0.5, gt=0, le=30)
    backoff_max_s: float = Field(default=20.0, gt=0, le=300)
    runtime_endpoint_url: str | None = Field(default=None, pattern=r"^https?://")
    sagemaker_endpoint_url: str | None = Field(default=None, pattern=r"^https?://")
    s3_endpoint_url: str | None = Field(default=None, pattern=r"^https?://")
    profile: str | None = Field(default=None, description="A named AWS profile.")
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    check_interval_s: float = Field(default=60.0, gt=0, description="Re-check for /health.")

    @model_validator(mode="after")
    def _an_endpoint(self) -> SageMakerSettings:
        if not (self.endpoint_name or self.async_endpoint_name):
            raise ValueError("set endpoint_name (real-time), async_endpoint_name, or both")
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("set access_key_id and secret_access_key together")
        if self.request_template is not None and self.request_template_file is not None:
            raise ValueError("set request_template or request_template_file, not both")
        return self


class ComposeSettings(BaseModel):
    """``[handlers.options.compose]``: which back end, and its section."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["comfyui", "sagemaker"] = "comfyui"
    instruction: str = Field(
        default=(
            "Picture 1 shows a person, Picture 2 shows clothing items, Picture 3 shows a place. "
            "Make a photorealistic photo of the person from Picture 1 wearing every clothing item "
            "from Picture 2, standing in the place from Picture 3. Keep the person's face, "
            "identity and body shape; keep the clothing's colours, patterns and details; match "
            "the lighting of the place."
        ),
        max_length=4000,
        description="The composition instruction; a job's prompt is appended to it.",
    )
    comfyui: ComfySettings = Field(default_factory=ComfySettings)
    sagemaker: SageMakerSettings | None = None

    @model_validator(mode="after")
    def _backend_section(self) -> ComposeSettings:
        if self.backend == "sagemaker" and self.sagemaker is None:
            raise ValueError(
                "backend = 'sagemaker' needs a [handlers.options.<kind>.sagemaker] section "
                "with bucket and endpoint_name or async_endpoint_name"
            )
        return self


def output_size(width: int | None, height: int | None, aspect: float) -> tuple[int, int]:
    """The output size: as asked, or ``aspect`` (width / height) at about one megapixel."""
    if width and height:
        return width, height
    if width:
        return width, _round16(width / aspect)
    if height:
        return _round16(height * aspect), height
    side = 1024 * 1024
    return _round16((side * aspect) ** 0.5), _round16((side / aspect) ** 0.5)


def _round16(value: float) -> int:
    return int(min(2048, max(256, round(value / 16) * 16)))
