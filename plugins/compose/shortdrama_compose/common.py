"""What both back ends do the same way: fetch the inputs, encode, store the result."""

from __future__ import annotations

import asyncio
import hashlib
import io
import re
from dataclasses import dataclass
from typing import Any

from PIL import Image
from shortdrama_worker.contract import JobContext, PermanentJobError, sniff_content_type

from shortdrama_compose.model import ComposeInput

MAX_DERIVED_SEED = 2**53 - 1  # JavaScript clients read the recorded seed exactly
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


@dataclass(frozen=True)
class Inputs:
    person: Image.Image
    clothing: list[Image.Image]
    place: Image.Image


async def fetch_inputs(params: ComposeInput, ctx: JobContext) -> Inputs:
    """Every input image, fetched at once; a bad one fails naming its field."""
    images = await asyncio.gather(
        ctx.fetch_image(params.person_image, field="person_image"),
        ctx.fetch_image(params.place_image, field="place_image"),
        *(
            ctx.fetch_image(ref, field=f"clothing_images[{index}]")
            for index, ref in enumerate(params.clothing_images)
        ),
    )
    return Inputs(person=images[0], place=images[1], clothing=list(images[2:]))


def derive_seed(job_id: str) -> int:
    """A seed fixed by the job id, so a retried job draws the same image."""
    return int.from_bytes(hashlib.sha256(job_id.encode()).digest()[:8], "big") & MAX_DERIVED_SEED


def png(image: Image.Image, *, compress_level: int = 1) -> bytes:
    if image.mode not in ("RGB", "RGBA", "L"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)[:80] or "job"


def instruction_for(instruction: str, prompt: str | None) -> str:
    return f"{instruction}\n{prompt.strip()}" if prompt and prompt.strip() else instruction


async def store_image(ctx: JobContext, data: bytes, name: str) -> dict[str, Any]:
    """Store a result image; the entry a result lists it with."""
    content_type = sniff_content_type(data)
    if content_type not in _EXTENSIONS:
        raise PermanentJobError(
            f"the back end returned {content_type or 'unknown data'}, not an image"
        )
    stored = await ctx.store_result(
        data, content_type=content_type, name=f"{name}.{_EXTENSIONS[content_type]}"
    )
    return {
        "url": stored,
        "key": stored.key,
        "content_type": stored.content_type,
        "size": stored.size,
    }
