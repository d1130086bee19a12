"""``face_swap``: fill a masked face with another person's face, through Seedream.

The masked image (a face blacked out by ``face_mask``) and the target face go
to Seedream as reference images 1 and 2 with a prompt that redraws only the
black region. The result is downloaded at once (the provider's URLs expire)
and stored; the result record keeps provider, model, inputs and usage so each
output stays traceable to what produced it.

Face swap is for footage whose people consented; see the architecture notes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

from PIL import Image
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from structlog.typing import FilteringBoundLogger

from shortdrama_worker.contract import (
    CONTRACT_VERSION,
    ConsentAttestation,
    Handler,
    HandlerEnv,
    HandlerInput,
    Health,
    JobContext,
    Provenance,
    StoredResult,
)
from shortdrama_worker.contract.fields import ImageRef
from shortdrama_worker.providers.images import PreparedImage, prepare_image
from shortdrama_worker.providers.seedream import (
    GeneratedImage,
    SeedreamClient,
    SeedreamSettings,
    check_size,
    nearest_size,
)

DEFAULT_SWAP_PROMPT = (
    "Image 1 is a photo in which one person's face is covered by a solid black ellipse. "
    "Image 2 shows the face of another person. Fill the black ellipse in image 1 with the "
    "face of the person in image 2, so that the identity matches image 2 while the head pose, "
    "gaze direction, expression, lighting, colour and sharpness match image 1. Keep everything "
    "outside the ellipse exactly as in image 1: hair, body, clothing, background, other people "
    "and framing. No black ellipse may remain."
)

OutputSize = Annotated[
    str,
    Field(
        description='"auto" (the recommended 2K size nearest the input\'s aspect ratio), '
        '"1K", "2K", "4K", or "WIDTHxHEIGHT" between 1280x720 and 4096x4096 pixels.',
        examples=["auto", "2K", "2304x1728"],
        max_length=11,
    ),
    AfterValidator(check_size),
]


class FaceSwapInput(HandlerInput):
    masked_image: ImageRef = Field(
        description="The picture with the face to replace blacked out by an ellipse "
        "(the face-mask result): https://, s3:// or data:image/… URI."
    )
    target_face: ImageRef = Field(
        description="A clear photo of the face to put there (one person, facing the camera)."
    )
    target_face_consent: ConsentAttestation = Field(
        description="Required: the release of the person whose face target_face shows, and "
        "who attests it. Recorded on the job and in the result's signed Content Credentials."
    )
    size: OutputSize = "auto"
    watermark: bool | None = Field(
        default=None,
        description="Add the provider's 'AI generated' mark; unset uses the worker's setting "
        "(on unless the operator turned it off). The result states whether it was added.",
    )


SWAP_PROVENANCE = Provenance(
    action="c2pa.edited",
    source_type="compositeWithTrainedAlgorithmicMedia",
    provider="ark",
    description="a face replaced by a generative model (Seedream)",
)


class FaceSwapSettings(BaseModel):
    """``[handlers.options.face_swap]``."""

    model_config = ConfigDict(extra="forbid")

    ark: SeedreamSettings = Field(default_factory=SeedreamSettings)
    watermark: bool = Field(
        default=True, description="Default for jobs that do not say (the provider's default)."
    )
    prompt: str = Field(default=DEFAULT_SWAP_PROMPT, min_length=20, max_length=4000)


def describe_ref(ref: str) -> str:
    """An input reference fit for a result record: no inline data, no URL signatures."""
    if ref.startswith("data:"):
        header = ref.split(",", 1)[0]
        return f"{header},… ({len(ref)} characters inline)"
    parts = urlsplit(ref)
    # Query strings of presigned URLs carry credentials; the path identifies the file.
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def input_record(ref: str, sent: PreparedImage) -> dict[str, Any]:
    """Provenance of one input: where it came from and a hash of what the provider saw."""
    return {
        "ref": describe_ref(ref),
        "sent_sha256": hashlib.sha256(sent.data).hexdigest(),
        "sent_width": sent.width,
        "sent_height": sent.height,
    }


@dataclass(frozen=True)
class Swap:
    """A finished Seedream face swap."""

    image: GeneratedImage
    size: str
    watermark: bool
    masked: PreparedImage
    face: PreparedImage


class FaceSwapper:
    """The Seedream step shared by ``face_swap`` and ``full_face_swap``."""

    def __init__(self, client: SeedreamClient, prompt: str) -> None:
        self.client = client
        self.prompt = prompt

    async def prepare(
        self, masked: Image.Image, face: Image.Image, *, masked_field: str, face_field: str
    ) -> tuple[PreparedImage, PreparedImage]:
        """Both reference images checked and fitted to Seedream's limits."""
        limits = self.client.limits
        return await asyncio.gather(
            asyncio.to_thread(prepare_image, masked, limits, field=masked_field),
            asyncio.to_thread(prepare_image, face, limits, field=face_field),
        )

    async def swap(
        self,
        masked: PreparedImage,
        face: PreparedImage,
        *,
        source_size: tuple[int, int],
        size: str,
        watermark: bool,
        log: FilteringBoundLogger,
    ) -> Swap:
        """Generate the swapped image; ``size="auto"`` follows ``source_size``."""
        chosen = (
            nearest_size(*source_size, self.client.settings.auto_sizes) if size == "auto" else size
        )
        image = await self.client.generate(
            prompt=self.prompt,
            images=[masked.data_uri(), face.data_uri()],
            size=chosen,
            watermark=watermark,
            log=log,
        )
        log.info(
            "face_swapped",
            model=image.model,
            size=chosen,
            usage=image.usage,
            delivery=image.delivery,
        )
        return Swap(image=image, size=chosen, watermark=watermark, masked=masked, face=face)

    def signed_provenance(
        self, swap: Swap, *, parent: str, consent: ConsentAttestation
    ) -> Provenance:
        """What the swapped image's Content Credentials say: model, consent, watermark."""
        return dataclasses.replace(
            SWAP_PROVENANCE,
            model=swap.image.model,
            parent=parent,
            consent={"target_face": consent.as_consent()},
            details={"provider_watermark": swap.watermark, "size": swap.size},
        )

    def provenance(self, swap: Swap) -> dict[str, Any]:
        """Which provider and model produced the image, and how."""
        s = self.client.settings
        return {
            "provider": "ark",
            "model": swap.image.model,
            "endpoint": s.base_url,
            "size": swap.size,
            "watermark": swap.watermark,
            "response_format": swap.image.delivery,
            "prompt": self.prompt,
        }


def image_record(stored: StoredResult, image: GeneratedImage) -> dict[str, Any]:
    return {
        "url": stored,
        "key": stored.key,
        "content_type": image.content_type,
        "width": image.width,
        "height": image.height,
    }


def extension(content_type: str) -> str:
    return {"image/png": "png", "image/webp": "webp"}.get(content_type, "jpg")


class FaceSwapHandler(Handler[FaceSwapInput, FaceSwapSettings]):
    """Seedream face swap of a masked image; CPU-side work only (the provider draws)."""

    contract_version = CONTRACT_VERSION
    slug = "face-swap"
    resource = "cpu"
    input_model = FaceSwapInput
    settings_model = FaceSwapSettings
    # Seedream takes up to a few minutes; retries of one call fit inside this.
    timeout_s = 900.0
    provenance = dataclasses.replace(SWAP_PROVENANCE, parent="masked_image")
    description = (
        "Put the target face into the blacked-out face of a masked image (Seedream). "
        "Returns a JPEG; size auto follows the input's aspect ratio."
    )

    def __init__(self, env: HandlerEnv[FaceSwapSettings]) -> None:
        super().__init__(env)
        self.config = env.settings
        self.seedream = SeedreamClient(
            self.config.ark,
            http=env.service_http,
            metrics=env.metrics,
            log=env.log,
            config_hint=f"handlers.options.{env.kind}.ark.api_key",
        )
        self.swapper = FaceSwapper(self.seedream, self.config.prompt)

    async def health(self) -> dict[str, Health]:
        """``ark`` is degraded without a key or after the provider refused it."""
        return {"ark": "healthy" if self.seedream.provider.healthy else "degraded"}

    async def run(self, params: FaceSwapInput, ctx: JobContext) -> dict[str, Any]:
        p = params
        watermark = self.config.watermark if p.watermark is None else p.watermark
        await ctx.progress(5, "fetching")
        masked_image, face_image = await asyncio.gather(
            ctx.fetch_image(p.masked_image, field="masked_image"),
            ctx.fetch_image(p.target_face, field="target_face"),
        )
        masked, face = await self.swapper.prepare(
            masked_image, face_image, masked_field="masked_image", face_field="target_face"
        )
        await ctx.progress(20, "generating")
        swap = await self.swapper.swap(
            masked,
            face,
            source_size=masked_image.size,
            size=p.size,
            watermark=watermark,
            log=ctx.log,
        )
        await ctx.progress(90, "storing")
        stored = await ctx.store_result(
            swap.image.data,
            content_type=swap.image.content_type,
            name=f"face_swap.{extension(swap.image.content_type)}",
            provenance=self.swapper.signed_provenance(
                swap, parent="masked_image", consent=p.target_face_consent
            ),
        )
        return {
            "image_url": stored,
            "image": image_record(stored, swap.image),
            "size": swap.size,
            "watermark": watermark,
            "consent": {"target_face": p.target_face_consent.model_dump()},
            "usage": {"ark": {**swap.image.usage, "model": swap.image.model}},
            "provenance": {
                **self.swapper.provenance(swap),
                "inputs": {
                    "masked_image": input_record(p.masked_image, masked),
                    "target_face": input_record(p.target_face, face),
                },
            },
        }
