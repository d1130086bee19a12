"""The ``qwen_vl`` face detector: Qwen-VL grounding on DashScope.

Costs a paid call per image but finds faces the local detector misses
(profiles, small or stylised faces). Boxes come back in ``order_faces`` order,
so ``face_index`` means the same person whichever backend is configured.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from PIL import Image
from structlog.typing import FilteringBoundLogger

from shortdrama_worker.contract import FaceBox
from shortdrama_worker.providers.dashscope import DashScopeClient, DashScopeSettings, Grounding


class QwenVLDetector:
    """A ``FaceDetector`` backed by ``DashScopeClient``.

    ``locate`` also returns the model and token usage, for the job result;
    ``detect`` is the plain ``FaceDetector`` interface.
    """

    name = "qwen_vl"

    def __init__(self, client: DashScopeClient, log: FilteringBoundLogger) -> None:
        self.client = client
        self._log = log

    @classmethod
    def from_settings(
        cls,
        settings: DashScopeSettings,
        *,
        http: aiohttp.ClientSession,
        metrics: Any,
        log: FilteringBoundLogger,
        config_hint: str,
    ) -> QwenVLDetector:
        """A detector with its own client (and so its own rate limiter).

        ``config_hint`` names the setting that holds the key, for the error an
        operator sees when it is missing.
        """
        client = DashScopeClient(
            settings, http=http, metrics=metrics, log=log, config_hint=config_hint
        )
        return cls(client, log)

    @property
    def healthy(self) -> bool:
        """False without a key or after DashScope refused it (for ``health()``)."""
        return self.client.provider.healthy

    async def locate(
        self, image: Image.Image, *, field: str = "image", log: FilteringBoundLogger | None = None
    ) -> Grounding:
        """Faces in ``image`` with the call's model and usage."""
        log = log or self._log
        prepared = await asyncio.to_thread(self.client.prepare, image, field=field)
        grounding = await self.client.ground_faces(prepared, image.size, log=log)
        if grounding.truncated:
            # Cut-off answers are parsed as far as they go; say so, a face may be missing.
            log.warning(
                "qwen_vl_answer_truncated",
                faces=len(grounding.faces),
                max_tokens=self.client.settings.max_tokens,
            )
        log.info("qwen_vl_faces", faces=len(grounding.faces), model=grounding.model)
        return grounding

    async def detect(self, image: Image.Image) -> list[FaceBox]:
        """Faces in ``image``, ordered by ``order_faces``; empty if none."""
        return (await self.locate(image)).faces
