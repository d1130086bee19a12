"""A local DashScope: Qwen-VL chat completions in OpenAI-compatible mode.

Speaks ``POST /compatible-mode/v1/chat/completions`` as documented by Alibaba
Cloud Model Studio ("OpenAI compatible - Vision", compatible-mode v1, docs as
of late 2025) with the error bodies of its error-code page: HTTP 429
``limit_requests``, 400 ``data_inspection_failed``, 400
``invalid_parameter_error``, 401 ``invalid_api_key``. Grounding answers follow
the Qwen3-VL cookbook: fenced JSON ``[{"bbox_2d": [...], "label": "face"}]``,
relative 0-1000 coordinates for ``qwen3*`` models and absolute pixels of the
model-resized image (28 px grid, 1280-token budget) for Qwen2.5-VL models.

Faces are given as fractions of the image (left, top, right, bottom), so one
script works whatever size the client sends. ``script`` queues one-off replies
(errors, odd answers) that are served before the default grounding answer.
"""

from __future__ import annotations

import base64
import io
import json
import math
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from PIL import Image

Fraction = tuple[float, float, float, float]
AnswerFormat = Literal["fenced", "plain", "truncated", "prose", "empty"]


@dataclass
class Reply:
    """One scripted answer: an error (status, body, headers) or a grounding answer."""

    status: int = 200
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    answer: AnswerFormat | None = None
    faces: list[Fraction] | None = None

    @staticmethod
    def error(
        status: int, code: str, message: str, type_: str | None = None, **headers: str
    ) -> Reply:
        return Reply(
            status=status,
            body={
                "error": {"code": code, "param": None, "message": message, "type": type_ or code},
                "id": f"chatcmpl-{uuid.uuid4()}",
                "request_id": str(uuid.uuid4()),
            },
            headers=dict(headers),
        )

    @staticmethod
    def rate_limited(retry_after: float | None = None) -> Reply:
        headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
        return Reply.error(
            429,
            "limit_requests",
            "You have exceeded your current request limit. For details, see: "
            "https://help.aliyun.com/zh/model-studio/error-code#rate-limit",
            **headers,
        )

    @staticmethod
    def moderation() -> Reply:
        return Reply.error(
            400, "data_inspection_failed", "Input data may contain inappropriate content."
        )

    @staticmethod
    def unauthorized() -> Reply:
        return Reply.error(
            401, "invalid_api_key", "Incorrect API key provided. ", "invalid_request_error"
        )

    @staticmethod
    def server_error() -> Reply:
        return Reply.error(
            500,
            "internal_error",
            "An internal error has occured, please try again later or contact service support.",
            "internal_error",
        )

    @staticmethod
    def grounding(answer: AnswerFormat, faces: list[Fraction] | None = None) -> Reply:
        return Reply(answer=answer, faces=faces)


@dataclass
class Seen:
    """A request as the fake received it."""

    at: float
    authorization: str | None
    body: dict[str, Any]
    image_size: tuple[int, int] | None


def _grid(width: int, height: int) -> tuple[int, int]:
    """The size Qwen2.5-VL resizes an image to before it answers in pixels."""
    factor, min_px, max_px = 28, 4 * 28 * 28, 1280 * 28 * 28
    w, h = max(factor, round(width / factor) * factor), max(factor, round(height / factor) * factor)
    if w * h > max_px:
        shrink = math.sqrt(width * height / max_px)
        w = math.floor(width / shrink / factor) * factor
        h = math.floor(height / shrink / factor) * factor
    elif w * h < min_px:
        grow = math.sqrt(min_px / (width * height))
        w, h = math.ceil(width * grow / factor) * factor, math.ceil(height * grow / factor) * factor
    return w, h


class FakeDashScope:
    """An aiohttp server on 127.0.0.1; use ``async with FakeDashScope(...) as fake``."""

    def __init__(
        self,
        *,
        api_key: str = "test-dashscope-key",
        faces: list[Fraction] | None = None,
        answer: AnswerFormat = "fenced",
        min_interval_s: float | None = None,
    ) -> None:
        self.api_key = api_key
        self.faces = list(faces or [])
        self.answer = answer
        # Requests closer together than this get a 429, like a provider's burst limit.
        self.min_interval_s = min_interval_s
        self.script: deque[Reply] = deque()
        self.requests: list[Seen] = []
        self.served: list[int] = []
        self._last_accepted: float | None = None
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def __aenter__(self) -> FakeDashScope:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/compatible-mode/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}/compatible-mode/v1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _respond(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> web.Response:
        self.served.append(status)
        return web.json_response(body, status=status, headers=headers)

    async def _chat(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        body = await request.json()
        seen = Seen(now, request.headers.get("Authorization"), body, None)
        self.requests.append(seen)
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            r = Reply.unauthorized()
            return self._respond(r.status, r.body or {})
        if self.min_interval_s is not None:
            if self._last_accepted is not None and now - self._last_accepted < self.min_interval_s:
                r = Reply.rate_limited()
                return self._respond(r.status, r.body or {}, r.headers)
            self._last_accepted = now
        reply = self.script.popleft() if self.script else Reply.grounding(self.answer)
        if reply.body is not None:
            return self._respond(reply.status, reply.body, reply.headers)

        try:
            content = body["messages"][0]["content"]
            url = next(p["image_url"]["url"] for p in content if p.get("type") == "image_url")
            model = str(body["model"])
        except (KeyError, IndexError, TypeError, StopIteration):
            r = Reply.error(
                400,
                "invalid_parameter_error",
                "<400> InternalError.Algo.InvalidParameter: messages must contain an image",
                "invalid_request_error",
            )
            return self._respond(r.status, r.body or {})
        if not url.startswith("data:image/"):
            r = Reply.error(
                400,
                "invalid_parameter_error",
                "<400> InternalError.Algo.InvalidParameter: The provided URL does not "
                "appear to be valid. Ensure it is correctly formatted.",
                "invalid_request_error",
            )
            return self._respond(r.status, r.body or {})
        image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        seen.image_size = image.size
        if min(image.size) <= 10:
            r = Reply.error(
                400,
                "invalid_parameter_error",
                "<400> InternalError.Algo.InvalidParameter: The image length and width do "
                f"not meet the model restrictions. [height:{image.height} or "
                f"width:{image.width} must be larger than 10]",
                "invalid_request_error",
            )
            return self._respond(r.status, r.body or {})

        faces = reply.faces if reply.faces is not None else self.faces
        qwen3 = model.startswith("qwen3")
        if qwen3:
            sx = sy = 1000.0
            patch = 32
        else:
            sx, sy = _grid(*image.size)
            patch = 28
        items = [
            {
                "bbox_2d": [round(x1 * sx), round(y1 * sy), round(x2 * sx), round(y2 * sy)],
                "label": "face",
            }
            for x1, y1, x2, y2 in faces
        ]
        text = json.dumps(items, indent=2)
        finish = "stop"
        fmt = reply.answer or self.answer
        if fmt == "fenced":
            text = f"```json\n{text}\n```"
        elif fmt == "truncated":
            # Cut inside the last object, as max_tokens does.
            text = "```json\n" + text[: text.rfind('"label"') + 4]
            finish = "length"
        elif fmt == "prose":
            text = "There are no human faces in this image."
        elif fmt == "empty":
            text = "```json\n[]\n```"
        prompt_tokens = math.ceil(image.width / patch) * math.ceil(image.height / patch) + 40
        completion_tokens = max(1, len(text) // 3)
        return self._respond(
            200,
            {
                "choices": [
                    {
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": finish,
                        "index": 0,
                        "logprobs": None,
                    }
                ],
                "object": "chat.completion",
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                    "prompt_tokens_details": {"cached_tokens": 0},
                },
                "created": int(time.time()),
                "system_fingerprint": None,
                "model": model,
                "id": f"chatcmpl-{uuid.uuid4()}",
            },
        )
