"""Volcano Engine ARK Seedream 4.x image generation (``POST /images/generations``).

Seedream takes a prompt and up to 14 reference images and returns one JPEG.
Its result URLs expire after 24 h, so the image is taken at once: inline as
``b64_json`` (the default here) or downloaded in the same job. Usage (images,
tokens) is counted as soon as the provider reports it, because it is billed
even when the download afterwards fails.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
from pydantic import Field
from structlog.typing import FilteringBoundLogger

from shortdrama_worker.contract.context import PluginMetrics
from shortdrama_worker.contract.errors import TransientJobError
from shortdrama_worker.providers.http import ProviderClient, ProviderSettings
from shortdrama_worker.providers.images import ImageLimits, decode_image

# The 2K sizes Seedream's docs recommend; "auto" picks among these.
RECOMMENDED_SIZES = (
    "2048x2048",
    "2304x1728",
    "1728x2304",
    "2560x1440",
    "1440x2560",
    "2496x1664",
    "1664x2496",
    "3024x1296",
)
SIZE_PRESETS = ("1K", "2K", "4K")
# Seedream 4.0 bounds for explicit "WxH" sizes.
MIN_OUTPUT_PIXELS = 1280 * 720
MAX_OUTPUT_PIXELS = 4096 * 4096
MAX_OUTPUT_ASPECT = 16.0

_SIZE = re.compile(r"^(\d{2,5})x(\d{2,5})$")


class SeedreamSettings(ProviderSettings):
    """``[handlers.options.<kind>.ark]``: ARK key, endpoint, model and limits."""

    base_url: str = Field(
        default="https://ark.cn-beijing.volces.com/api/v3",
        description="ARK base URL (BytePlus: https://ark.ap-southeast.bytepluses.com/api/v3).",
    )
    model: str = Field(
        default="doubao-seedream-4-0-250828",
        description="Model or endpoint id (BytePlus ids drop the doubao- prefix).",
    )
    response_format: Literal["b64_json", "url"] = Field(
        default="b64_json",
        description="b64_json returns the image inline; url needs an immediate download.",
    )
    auto_sizes: list[str] = Field(
        default_factory=lambda: list(RECOMMENDED_SIZES),
        min_length=1,
        description='Sizes that size="auto" chooses from, by nearest aspect ratio.',
    )
    max_input_pixels: int = Field(
        default=4096 * 4096,
        ge=64 * 64,
        le=6000 * 6000,
        description="Reference images are scaled down to this (provider limit 6000x6000).",
    )
    max_input_bytes: int = Field(default=10 * 1024 * 1024, ge=64 * 1024, le=10 * 1024 * 1024)
    max_aspect_ratio: float = Field(
        default=16.0, ge=1, le=16, description="Widest input accepted (3 for early 4.0 models)."
    )
    max_result_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    timeout_s: float = Field(default=180.0, gt=0, le=900)
    requests_per_minute: float = Field(default=30.0, ge=0)


def parse_size(size: str) -> tuple[int, int] | None:
    """``"2048x1536"`` → ``(2048, 1536)``; presets and junk → ``None``."""
    match = _SIZE.match(size)
    return (int(match.group(1)), int(match.group(2))) if match else None


def check_size(size: str) -> str:
    """Validate a requested output size; raise ``ValueError`` saying what is allowed."""
    if size == "auto" or size in SIZE_PRESETS:
        return size
    dims = parse_size(size)
    if dims is None:
        raise ValueError('size must be "auto", "1K", "2K", "4K" or "WIDTHxHEIGHT"')
    w, h = dims
    if not MIN_OUTPUT_PIXELS <= w * h <= MAX_OUTPUT_PIXELS:
        raise ValueError(
            f"{size} has {w * h} pixels; Seedream needs between 1280x720 and 4096x4096"
        )
    if max(w / h, h / w) > MAX_OUTPUT_ASPECT:
        raise ValueError(f"{size} is wider than the 16:1 Seedream allows")
    return size


def nearest_size(width: int, height: int, choices: list[str]) -> str:
    """The choice whose aspect ratio is closest to ``width:height`` (on a log scale)."""
    target = math.log(width / height)

    def distance(choice: str) -> float:
        dims = parse_size(choice)
        return abs(math.log(dims[0] / dims[1]) - target) if dims else math.inf

    return min(choices, key=distance)


@dataclass(frozen=True)
class GeneratedImage:
    """The generated image, already in hand, with what produced it."""

    data: bytes
    content_type: str
    width: int
    height: int
    model: str
    usage: dict[str, int]
    delivery: Literal["b64_json", "url"]


class SeedreamClient:
    """Image generation with reference images against ARK."""

    def __init__(
        self,
        settings: SeedreamSettings,
        *,
        http: aiohttp.ClientSession,
        metrics: PluginMetrics | None,
        log: FilteringBoundLogger,
        config_hint: str,
    ) -> None:
        self.settings = settings
        self.provider = ProviderClient(
            "ark",
            "Seedream (ARK)",
            settings,
            http=http,
            metrics=metrics,
            log=log,
            config_hint=config_hint,
        )
        self.limits = ImageLimits(
            provider="Seedream (ARK)",
            min_side=15,
            max_pixels=settings.max_input_pixels,
            max_bytes=settings.max_input_bytes,
            max_aspect_ratio=settings.max_aspect_ratio,
        )

    async def generate(
        self,
        *,
        prompt: str,
        images: list[str],
        size: str,
        watermark: bool,
        log: FilteringBoundLogger | None = None,
    ) -> GeneratedImage:
        """One image from ``prompt`` and reference ``images`` (URLs or data URIs)."""
        body: dict[str, Any] = {
            "model": self.settings.model,
            "prompt": prompt,
            "image": images if len(images) != 1 else images[0],
            "size": size,
            "response_format": self.settings.response_format,
            "watermark": watermark,
            "sequential_image_generation": "disabled",
            "stream": False,
        }
        doc = await self.provider.post_json("images/generations", body, log=log)
        usage = _usage_of(doc.get("usage"))
        # Billed whatever happens next, so counted now.
        self.provider.record_usage("images", usage.get("generated_images", 0))
        self.provider.record_usage("output_tokens", usage.get("output_tokens", 0))
        data = doc.get("data")
        item = data[0] if isinstance(data, list) and data else None
        if not isinstance(item, dict):
            raise TransientJobError(
                "Seedream (ARK) returned no image", code="provider_bad_response"
            )
        if isinstance(item.get("error"), dict):
            raise self.provider.classify(200, _error_body(item["error"]))
        model = str(doc.get("model") or self.settings.model)
        if isinstance(item.get("b64_json"), str):
            try:
                raw = base64.b64decode(item["b64_json"], validate=True)
            except (binascii.Error, ValueError):
                raise TransientJobError(
                    "Seedream (ARK) returned broken base64 image data",
                    code="provider_bad_response",
                ) from None
            return await self._finish(raw, model, usage, "b64_json")
        if isinstance(item.get("url"), str):
            raw = await self._download(item["url"], log=log)
            return await self._finish(raw, model, usage, "url")
        raise TransientJobError(
            "Seedream (ARK) returned neither an image URL nor image data",
            code="provider_bad_response",
        )

    async def _download(self, url: str, *, log: FilteringBoundLogger | None) -> bytes:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise TransientJobError(
                f"Seedream (ARK) returned an unusable result URL scheme {parts.scheme!r}",
                code="provider_bad_response",
            )
        # A presigned object-storage URL: no API key, and not the API's rate budget.
        try:
            resp = await self.provider.send("GET", url, limited=False, log=log)
        except TransientJobError as exc:
            raise TransientJobError(
                f"Seedream (ARK) generated the image but it could not be downloaded from "
                f"{parts.hostname}: {exc.message}. The job will be retried.",
                code="result_unavailable",
            ) from None
        if resp.status in (403, 404, 410):
            raise TransientJobError(
                f"Seedream (ARK) generated the image but its download URL on {parts.hostname} "
                f"had already expired or vanished (HTTP {resp.status}). The job will be "
                "retried and the image generated again.",
                code="result_expired",
            )
        if resp.status >= 400:
            raise TransientJobError(
                f"downloading the Seedream result from {parts.hostname} failed "
                f"(HTTP {resp.status}); the job will be retried",
                code="result_unavailable",
            )
        if len(resp.body) > self.settings.max_result_bytes:
            raise TransientJobError(
                f"the Seedream result is {len(resp.body)} bytes, over the "
                f"{self.settings.max_result_bytes}-byte limit",
                code="result_unavailable",
            )
        return resp.body

    async def _finish(
        self,
        raw: bytes,
        model: str,
        usage: dict[str, int],
        delivery: Literal["b64_json", "url"],
    ) -> GeneratedImage:
        try:
            image = await asyncio.to_thread(decode_image, raw, what="the Seedream result")
        except ValueError as exc:
            raise TransientJobError(str(exc), code="provider_bad_response") from None
        fmt = (image.format or "JPEG").lower()
        return GeneratedImage(
            data=raw,
            content_type=f"image/{'jpeg' if fmt == 'jpg' else fmt}",
            width=image.width,
            height=image.height,
            model=model,
            usage=usage,
            delivery=delivery,
        )


def _usage_of(usage: Any) -> dict[str, int]:
    if not isinstance(usage, dict):
        return {}
    return {
        key: int(value)
        for key in ("generated_images", "output_tokens", "total_tokens")
        if isinstance(value := usage.get(key), int | float)
    }


def _error_body(error: dict[str, Any]) -> bytes:
    return json.dumps({"error": error}).encode()
