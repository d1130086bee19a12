"""Fitting images inside a provider's limits before they are sent.

Providers answer an oversize or oddly shaped image with a terse 400 (or bill
for thousands of visual tokens). We downscale what is merely too big and
refuse, naming the field, what no resize can fix (a sliver, a tiny image).
These functions are CPU-bound: call them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass

from PIL import Image

from shortdrama_worker.contract.errors import InputError


@dataclass(frozen=True)
class ImageLimits:
    """What one provider accepts as an input image."""

    provider: str
    min_side: int
    max_pixels: int
    max_bytes: int
    max_aspect_ratio: float


@dataclass(frozen=True)
class PreparedImage:
    """An encoded image ready to send, with its size and the scale applied."""

    data: bytes
    content_type: str
    width: int
    height: int
    scale: float
    """Prepared width divided by original width."""

    def data_uri(self) -> str:
        """The image as a ``data:`` URI (lower-case format, as ARK requires)."""
        return f"data:{self.content_type};base64,{base64.b64encode(self.data).decode('ascii')}"


def to_rgb(image: Image.Image) -> Image.Image:
    """Drop alpha onto white: JPEG has no alpha, and black would read as a mask."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def check_shape(image: Image.Image, limits: ImageLimits, *, field: str) -> None:
    """Refuse an image whose shape no resize can bring inside ``limits``."""
    w, h = image.size
    if min(w, h) < limits.min_side:
        raise InputError(
            field,
            f"the image is {w}x{h} px; {limits.provider} needs both sides to be at least "
            f"{limits.min_side} px",
            code="image_too_small",
        )
    ratio = max(w / h, h / w)
    if ratio > limits.max_aspect_ratio:
        raise InputError(
            field,
            f"the image is {w}x{h} px, an aspect ratio of {ratio:.1f}:1; {limits.provider} "
            f"accepts at most {limits.max_aspect_ratio:g}:1, so crop it first",
            code="bad_aspect_ratio",
        )


def prepare_image(
    image: Image.Image,
    limits: ImageLimits,
    *,
    field: str,
    size: tuple[int, int] | None = None,
    quality: int = 92,
) -> PreparedImage:
    """Check, resize and JPEG-encode ``image`` so the provider accepts it.

    ``size`` forces exact dimensions (a model's own resize grid); otherwise the
    image is only scaled down, keeping its aspect ratio, to ``max_pixels``.
    """
    check_shape(image, limits, field=field)
    original_w = image.width
    rgb = to_rgb(image)
    if size is None:
        w, h = rgb.size
        if w * h > limits.max_pixels:
            factor = math.sqrt(limits.max_pixels / (w * h))
            size = (max(1, math.floor(w * factor)), max(1, math.floor(h * factor)))
    if size is not None and size != rgb.size:
        rgb = rgb.resize(size, Image.Resampling.LANCZOS)
    data = _encode_jpeg(rgb, quality)
    # A noisy photo can still exceed the byte limit: lower quality, then size.
    while len(data) > limits.max_bytes:
        if quality > 70:
            quality -= 10
        else:
            rgb = rgb.resize(
                (max(1, int(rgb.width * 0.8)), max(1, int(rgb.height * 0.8))),
                Image.Resampling.LANCZOS,
            )
        data = _encode_jpeg(rgb, quality)
    return PreparedImage(
        data=data,
        content_type="image/jpeg",
        width=rgb.width,
        height=rgb.height,
        scale=rgb.width / original_w,
    )


def _encode_jpeg(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decode_image(data: bytes, *, what: str) -> Image.Image:
    """Decode image bytes fully, or raise ``ValueError`` naming ``what``."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as exc:  # PIL raises many types for broken data
        raise ValueError(f"{what} is not a readable image ({exc})") from None
    return image
