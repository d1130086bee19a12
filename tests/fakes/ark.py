"""A local Volcano Engine ARK: Seedream 4.0 ``POST /api/v3/images/generations``.

Follows the ARK v3 images API (volcengine.com/docs/82379/1541523, Seedream 4.0,
and the request/response types of ``volcengine-ark-runtime`` 5.0.x) with the
error bodies of docs/82379/1299023: ``{"error": {"code", "message", "param",
"type"}}`` for 400 ``InvalidParameter``/``*SensitiveContentDetected``, 401
``AuthenticationError``, 429 ``ModelAccountRpmRateLimitExceeded``, 500
``InternalServiceError``. Result URLs point at the fake's own object store,
whose expired links answer like TOS (403 ``AccessDenied`` "Request has
expired", XML).

The "generated" image is reference image 1 at the requested size with its
black (masked) pixels filled with the mean colour of reference image 2, and a
white mark in the bottom-right corner when ``watermark`` is true: enough for a
test to see that the mask was filled and the watermark honoured.
"""

from __future__ import annotations

import base64
import io
import re
import socket
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from PIL import Image, ImageDraw, ImageStat

ResultMode = Literal["ok", "expired", "missing", "unreachable"]
PRESETS = {"1K": (1024, 1024), "2K": (2048, 2048), "4K": (4096, 4096)}
_DATA_URI = re.compile(r"^data:image/([a-z]+);base64,(.*)$", re.S)


@dataclass
class Reply:
    """One scripted answer (an error body or a 200 whose image failed)."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def error(status: int, code: str, message: str, type_: str, **headers: str) -> Reply:
        request_id = f"0217{int(time.time() * 1000)}{uuid.uuid4().hex[:16]}"
        return Reply(
            status,
            {
                "error": {
                    "code": code,
                    "message": f"{message} Request id: {request_id}",
                    "param": "",
                    "type": type_,
                }
            },
            dict(headers),
        )

    @staticmethod
    def rate_limited(retry_after: float | None = None) -> Reply:
        headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
        return Reply.error(
            429,
            "ModelAccountRpmRateLimitExceeded",
            "Request failed because you have exceeded the RPM limit of the model. "
            "Please try again later.",
            "TooManyRequests",
            **headers,
        )

    @staticmethod
    def moderation() -> Reply:
        return Reply.error(
            400,
            "InputImageSensitiveContentDetected.PrivacyInformation",
            "The request failed because the input image may contain real person.",
            "BadRequest",
        )

    @staticmethod
    def unauthorized() -> Reply:
        return Reply.error(
            401,
            "AuthenticationError",
            "The API key or AK/SK in the request is missing or invalid.",
            "Unauthorized",
        )

    @staticmethod
    def server_error() -> Reply:
        return Reply.error(
            500,
            "InternalServiceError",
            "The service encountered an unexpected internal error.",
            "InternalServerError",
        )

    @staticmethod
    def spending_cap() -> Reply:
        return Reply.error(
            429,
            "SetLimitExceeded",
            "Your account has reached the inference limit you set for the model.",
            "TooManyRequests",
        )

    @staticmethod
    def output_refused() -> Reply:
        """A 200 whose single image was refused by output moderation."""
        return Reply(
            200,
            {
                "model": "doubao-seedream-4-0-250828",
                "created": int(time.time()),
                "data": [
                    {
                        "error": {
                            "code": "OutputImageSensitiveContentDetected",
                            "message": "The request failed because the output image may "
                            "contain sensitive information.",
                        }
                    }
                ],
                "usage": {"generated_images": 0, "output_tokens": 0, "total_tokens": 0},
            },
        )


@dataclass
class Seen:
    at: float
    authorization: str | None
    body: dict[str, Any]
    images: list[Image.Image]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


class FakeArk:
    """An aiohttp server on 127.0.0.1; use ``async with FakeArk(...) as fake``."""

    def __init__(self, *, api_key: str = "test-ark-key", result: ResultMode = "ok") -> None:
        self.api_key = api_key
        self.result = result
        self.script: deque[Reply] = deque()
        self.requests: list[Seen] = []
        self.downloads: list[str] = []
        self._objects: dict[str, bytes] = {}
        self._runner: web.AppRunner | None = None
        self.origin = ""
        self.base_url = ""

    async def __aenter__(self) -> FakeArk:
        app = web.Application(client_max_size=128 * 1024 * 1024)
        app.router.add_post("/api/v3/images/generations", self._generate)
        app.router.add_get("/tos/{name}", self._object)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.origin = f"http://127.0.0.1:{port}"
        self.base_url = f"{self.origin}/api/v3"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _object(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.downloads.append(name)
        if self.result == "expired":
            xml = (
                '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
                "<Message>Request has expired</Message>"
                f"<RequestId>{uuid.uuid4().hex}</RequestId><HostId>tos-cn-beijing</HostId>"
                "<EC>0003-00000016</EC></Error>"
            )
            return web.Response(status=403, text=xml, content_type="application/xml")
        data = self._objects.get(name)
        if data is None or self.result == "missing":
            xml = (
                '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchKey</Code>'
                "<Message>The specified key does not exist.</Message></Error>"
            )
            return web.Response(status=404, text=xml, content_type="application/xml")
        return web.Response(body=data, content_type="image/jpeg")

    def _bad(self, message: str, code: str = "InvalidParameter") -> web.Response:
        r = Reply.error(400, code, message, "BadRequest")
        return web.json_response(r.body, status=r.status)

    async def _generate(self, request: web.Request) -> web.Response:
        body = await request.json()
        seen = Seen(time.monotonic(), request.headers.get("Authorization"), body, [])
        self.requests.append(seen)
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            r = Reply.unauthorized()
            return web.json_response(r.body, status=r.status)
        if self.script:
            r = self.script.popleft()
            return web.json_response(r.body, status=r.status, headers=r.headers)
        for key in ("model", "prompt"):
            if not body.get(key):
                return self._bad(
                    f"The parameter `{key}` specified in the request is missing.",
                    "MissingParameter",
                )
        refs = body.get("image") or []
        refs = [refs] if isinstance(refs, str) else refs
        if len(refs) > 14:
            return self._bad(
                "The parameter `image` specified in the request is not valid: too many images."
            )
        for ref in refs:
            match = _DATA_URI.match(ref)
            if not match:
                return self._bad(
                    "The parameter `image` specified in the request is not valid: invalid data uri."
                )
            raw = base64.b64decode(match.group(2))
            image = Image.open(io.BytesIO(raw))
            w, h = image.size
            if (
                len(raw) > 10 * 1024 * 1024
                or w * h > 6000 * 6000
                or min(w, h) <= 14
                or max(w / h, h / w) > 16
            ):
                return self._bad(
                    "The parameter `image` specified in the request is not valid: "
                    f"image size {w}x{h} ({len(raw)} bytes) is out of range."
                )
            seen.images.append(image.convert("RGB"))
        size = str(body.get("size", "2048x2048"))
        dims = PRESETS.get(size)
        if dims is None:
            m = re.fullmatch(r"(\d+)x(\d+)", size)
            if not m:
                return self._bad("The parameter `size` specified in the request is not valid.")
            dims = (int(m.group(1)), int(m.group(2)))
            if not 1280 * 720 <= dims[0] * dims[1] <= 4096 * 4096:
                return self._bad(
                    f"The parameter `size` specified in the request is not valid: {size}."
                )

        out = self._draw(seen.images, dims, watermark=bool(body.get("watermark", True)))
        data = _jpeg(out)
        item: dict[str, Any] = {"size": f"{dims[0]}x{dims[1]}"}
        if body.get("response_format") == "b64_json":
            item["b64_json"] = base64.b64encode(data).decode()
        else:
            name = f"{uuid.uuid4().hex}.jpeg"
            self._objects[name] = data
            origin = (
                f"http://127.0.0.1:{_closed_port()}"
                if self.result == "unreachable"
                else self.origin
            )
            item["url"] = (
                f"{origin}/tos/{name}?X-Tos-Algorithm=TOS4-HMAC-SHA256"
                "&X-Tos-Expires=86400&X-Tos-Signature=fake"
            )
        tokens = dims[0] * dims[1] // 256
        return web.json_response(
            {
                "model": body["model"],
                "created": int(time.time()),
                "data": [item],
                "usage": {"generated_images": 1, "output_tokens": tokens, "total_tokens": tokens},
            }
        )

    @staticmethod
    def _draw(refs: list[Image.Image], dims: tuple[int, int], *, watermark: bool) -> Image.Image:
        base = refs[0].resize(dims) if refs else Image.new("RGB", dims, (128, 128, 128))
        if len(refs) > 1:
            fill = tuple(round(v) for v in ImageStat.Stat(refs[1]).mean[:3])
            # Near-black pixels are the mask; "draw the face" there.
            hole = base.convert("L").point(lambda v: 255 if v < 16 else 0)
            base.paste(Image.new("RGB", dims, fill), mask=hole)  # type: ignore[arg-type]
        if watermark:
            w, h = dims
            ImageDraw.Draw(base).rectangle(
                (w - w // 8, h - h // 16, w - 1, h - 1), fill=(255, 255, 255)
            )
        return base
