"""DashScope (Alibaba Model Studio) Qwen-VL through the OpenAI-compatible API.

Used for grounding: the model is asked for face boxes as JSON. Two things make
that harder than it looks, both handled here:

- **Coordinates depend on the model family.** Qwen3-VL answers in relative
  coordinates, 0-1000 on each axis. Qwen2.5-VL (``qwen2.5-vl-*`` and the older
  ``qwen-vl-max``/``qwen-vl-plus`` snapshots) answers in absolute pixels of the
  image *as the model resized it* (each side a multiple of 28 within a pixel
  budget). We therefore send Qwen2.5-VL an image already on that grid, so its
  pixels are ours and the mapping back is a plain scale.
- **The JSON is often fenced or cut off** (``max_tokens``), so parsing strips
  fences, repairs a truncated list, and as a last resort picks out every
  complete ``bbox_2d`` array.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
from PIL import Image
from pydantic import Field
from structlog.typing import FilteringBoundLogger

from shortdrama_worker.contract import FaceBox, order_faces
from shortdrama_worker.contract.context import PluginMetrics
from shortdrama_worker.contract.errors import TransientJobError
from shortdrama_worker.providers.http import ProviderClient, ProviderSettings
from shortdrama_worker.providers.images import ImageLimits, PreparedImage, prepare_image

CoordinateSystem = Literal["relative_1000", "absolute"]

DEFAULT_GROUNDING_PROMPT = (
    "Locate every human face in the image. Report bbox coordinates in JSON format like "
    'this: [{"bbox_2d": [x1, y1, x2, y2], "label": "face"}]. '
    "If there is no human face, answer []."
)

# Qwen2.5-VL's own resize: 28 px per visual token side, default token budget 1280.
_QWEN25_FACTOR = 28
_QWEN25_MIN_PIXELS = 4 * 28 * 28


class DashScopeSettings(ProviderSettings):
    """``[handlers.options.<kind>.dashscope]``: DashScope key, endpoint, model, limits."""

    base_url: str = Field(
        default="https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
        description="OpenAI-compatible base URL of the key's region (Singapore by default; "
        "Beijing is https://dashscope.aliyuncs.com/compatible-mode/v1).",
    )
    model: str = Field(default="qwen3-vl-plus", description="Qwen-VL model for grounding.")
    coordinates: Literal["auto", "relative_1000", "absolute"] = Field(
        default="auto",
        description="Box convention; auto picks relative 0-1000 for qwen3* models, "
        "absolute pixels otherwise (Qwen2.5-VL).",
    )
    max_image_pixels: int = Field(
        default=1280 * 28 * 28,
        ge=_QWEN25_MIN_PIXELS,
        description="Images are scaled down to this many pixels before sending (cost: "
        "about one input token per 28x28 or 32x32 px).",
    )
    max_tokens: int = Field(default=1024, ge=64, le=8192, description="Answer length cap.")
    prompt: str = Field(default=DEFAULT_GROUNDING_PROMPT, min_length=10)
    timeout_s: float = Field(default=60.0, gt=0, le=900)
    requests_per_minute: float = Field(default=60.0, ge=0)


def coordinate_system(settings: DashScopeSettings) -> CoordinateSystem:
    """The box convention of the configured model."""
    if settings.coordinates != "auto":
        return settings.coordinates
    return "relative_1000" if settings.model.lower().startswith("qwen3") else "absolute"


def smart_resize(
    width: int, height: int, *, factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """Qwen2.5-VL's resize rule: sides multiples of ``factor``, area within bounds."""
    w = max(factor, round(width / factor) * factor)
    h = max(factor, round(height / factor) * factor)
    if w * h > max_pixels:
        beta = math.sqrt(width * height / max_pixels)
        w = max(factor, math.floor(width / beta / factor) * factor)
        h = max(factor, math.floor(height / beta / factor) * factor)
    elif w * h < min_pixels:
        beta = math.sqrt(min_pixels / (width * height))
        w = math.ceil(width * beta / factor) * factor
        h = math.ceil(height * beta / factor) * factor
    return w, h


@dataclass(frozen=True)
class ChatResult:
    """The answer of one chat completion."""

    content: str
    finish_reason: str | None
    model: str
    usage: dict[str, int]


@dataclass(frozen=True)
class Grounding:
    """Faces found by the model, in pixels of the caller's image, ``order_faces`` order."""

    faces: list[FaceBox]
    model: str
    usage: dict[str, int]
    truncated: bool
    raw_content: str = field(repr=False)


class DashScopeClient:
    """Chat completions and face grounding against DashScope's compatible mode."""

    def __init__(
        self,
        settings: DashScopeSettings,
        *,
        http: aiohttp.ClientSession,
        metrics: PluginMetrics | None,
        log: FilteringBoundLogger,
        config_hint: str,
    ) -> None:
        self.settings = settings
        self.provider = ProviderClient(
            "dashscope",
            "DashScope (Qwen-VL)",
            settings,
            http=http,
            metrics=metrics,
            log=log,
            config_hint=config_hint,
        )
        self.limits = ImageLimits(
            provider="DashScope (Qwen-VL)",
            min_side=11,
            max_pixels=settings.max_image_pixels,
            max_bytes=7 * 1024 * 1024,
            max_aspect_ratio=200.0,
        )

    async def chat(
        self, content: list[dict[str, Any]], *, log: FilteringBoundLogger | None = None
    ) -> ChatResult:
        """One user turn with ``content`` parts (images, text); returns the answer text."""
        body = {
            "model": self.settings.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": self.settings.max_tokens,
        }
        doc = await self.provider.post_json("chat/completions", body, log=log)
        try:
            choice = doc["choices"][0]
            text = choice["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError):
            raise TransientJobError(
                "DashScope (Qwen-VL) answered without a message", code="provider_bad_response"
            ) from None
        if isinstance(text, list):  # some models return content parts
            text = "".join(str(p.get("text", "")) for p in text if isinstance(p, dict))
        usage = _usage_of(doc.get("usage"))
        self.provider.record_usage("input_tokens", usage.get("prompt_tokens", 0))
        self.provider.record_usage("output_tokens", usage.get("completion_tokens", 0))
        return ChatResult(
            content=str(text),
            finish_reason=choice.get("finish_reason"),
            model=str(doc.get("model") or self.settings.model),
            usage=usage,
        )

    def prepare(self, image: Image.Image, *, field: str) -> PreparedImage:
        """The image as this model should see it (CPU-bound; run in a thread)."""
        size = None
        if coordinate_system(self.settings) == "absolute":
            # Send the model's own grid so its absolute pixels are the sent pixels.
            size = smart_resize(
                image.width,
                image.height,
                factor=_QWEN25_FACTOR,
                min_pixels=_QWEN25_MIN_PIXELS,
                max_pixels=self.settings.max_image_pixels,
            )
        return prepare_image(image, self.limits, field=field, size=size)

    async def ground_faces(
        self,
        prepared: PreparedImage,
        original_size: tuple[int, int],
        *,
        log: FilteringBoundLogger | None = None,
    ) -> Grounding:
        """Ask for face boxes in ``prepared``; map them to ``original_size`` pixels."""
        content: list[dict[str, Any]] = [
            {"type": "image_url", "image_url": {"url": prepared.data_uri()}},
            {"type": "text", "text": self.settings.prompt},
        ]
        result = await self.chat(content, log=log)
        raw = extract_boxes(result.content)
        faces = to_face_boxes(
            raw,
            system=coordinate_system(self.settings),
            sent_size=(prepared.width, prepared.height),
            original_size=original_size,
        )
        return Grounding(
            faces=order_faces(faces),
            model=result.model,
            usage=result.usage,
            truncated=result.finish_reason == "length",
            raw_content=result.content,
        )


def _usage_of(usage: Any) -> dict[str, int]:
    if not isinstance(usage, dict):
        return {}
    out: dict[str, int] = {}
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        value = usage.get(key)
        if isinstance(value, int | float):
            out[key] = int(value)
    return out


_FENCE = re.compile(r"```[a-zA-Z0-9_-]*\s*\n?(.*?)(?:```|$)", re.DOTALL)
_NUM = r"\s*(-?\d+(?:\.\d+)?)\s*"
_BBOX = re.compile(r'"bbox(?:_2d)?"\s*:\s*\[' + ",".join([_NUM] * 4) + r"\]")


def extract_boxes(text: str) -> list[tuple[float, float, float, float]]:
    """Every ``[x1, y1, x2, y2]`` the model reported, in its own coordinates.

    Accepts plain or fenced JSON, a list or a single object, and output cut off
    mid-list; a reply with no boxes (``[]`` or prose) gives an empty list.
    """
    fenced = _FENCE.search(text)
    body = fenced.group(1) if fenced else text
    starts = [i for i in (body.find("["), body.find("{")) if i >= 0]
    if not starts:
        return []
    try:
        doc = json.JSONDecoder().raw_decode(body[min(starts) :])[0]
    except ValueError:
        # Broken or cut off (max_tokens): every complete bbox array still
        # counts. Dropping the last whole object instead, as a plain repair
        # would, can lose a face and shift every face_index after it.
        return [(float(a), float(b), float(c), float(d)) for a, b, c, d in _BBOX.findall(body)]
    return list(_walk_boxes(doc))


def _walk_boxes(doc: Any) -> Iterator[tuple[float, float, float, float]]:
    if isinstance(doc, list):
        if len(doc) == 4 and all(isinstance(v, int | float) for v in doc):
            yield (float(doc[0]), float(doc[1]), float(doc[2]), float(doc[3]))
            return
        for item in doc:
            yield from _walk_boxes(item)
    elif isinstance(doc, dict):
        bbox = doc.get("bbox_2d", doc.get("bbox"))
        if isinstance(bbox, list):
            if len(bbox) == 4 and all(isinstance(v, int | float) for v in bbox):
                yield (float(bbox[0]), float(bbox[1]), float(bbox[2]), float(bbox[3]))
            return
        for value in doc.values():
            if isinstance(value, list | dict):
                yield from _walk_boxes(value)


def to_face_boxes(
    raw: list[tuple[float, float, float, float]],
    *,
    system: CoordinateSystem,
    sent_size: tuple[int, int],
    original_size: tuple[int, int],
) -> list[FaceBox]:
    """Model coordinates → pixel boxes of the original image, clamped, degenerate ones dropped."""
    width, height = original_size
    if system == "relative_1000":
        sx, sy = width / 1000.0, height / 1000.0
    else:
        sx, sy = width / sent_size[0], height / sent_size[1]
    faces: list[FaceBox] = []
    for x1, y1, x2, y2 in raw:
        # The model sometimes reverses corners.
        left, right = sorted((x1 * sx, x2 * sx))
        top, bottom = sorted((y1 * sy, y2 * sy))
        left, right = max(0.0, left), min(float(width), right)
        top, bottom = max(0.0, top), min(float(height), bottom)
        if right - left < 2 or bottom - top < 2:
            continue
        x, y = round(left), round(top)
        faces.append(
            FaceBox(
                x=x,
                y=y,
                width=round(right) - x,
                height=round(bottom) - y,
                # Grounding gives no score; 1.0 marks "reported by the model".
                confidence=1.0,
            )
        )
    return faces
