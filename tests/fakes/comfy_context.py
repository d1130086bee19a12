"""A small ``JobContext`` for driving ComfyUI handlers without the daemon.

It keeps the host's promises that matter to the pipeline — ``gpu()`` is a
real semaphore shared by every context built on the same ``GpuGate``, inputs
are fetched for real (``data:`` URIs or HTTP) and decoded with Pillow — and
records what the handler did: progress reports, stored files, GPU hold
intervals. Used by the handler tests and by ``bench/gpu_duty_cycle.py``.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog
from PIL import Image

from shortdrama_worker.errors import InputError
from shortdrama_worker.handlers.base import FetchedInput, StoredResult
from shortdrama_worker.metrics import Metrics


class GpuGate:
    """GPU slots with a record of when each was held."""

    def __init__(self, slots: int = 1) -> None:
        self._sem = asyncio.Semaphore(slots)
        self.held: list[tuple[float, float]] = []

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        async with self._sem:
            start = time.monotonic()
            try:
                yield
            finally:
                self.held.append((start, time.monotonic()))


@dataclass
class StoredCall:
    name: str
    content_type: str
    data: bytes
    primary: bool


@dataclass
class RecordingContext:
    """Implements ``shortdrama_worker.handlers.base.JobContext`` for tests."""

    job_id: str
    kind: str
    http: aiohttp.ClientSession
    gate: GpuGate = field(default_factory=GpuGate)
    metrics: Metrics = field(default_factory=Metrics)
    settings: Mapping[str, Any] = field(default_factory=dict)
    attempt: int = 1
    fetch_latency_s: float = 0.0
    store_latency_s: float = 0.0
    progress_reports: list[tuple[float, str | None]] = field(default_factory=list)
    stored: list[StoredCall] = field(default_factory=list)
    log: Any = field(default_factory=lambda: structlog.get_logger("test"))

    async def fetch_bytes(self, ref: str, *, field: str) -> FetchedInput:
        if self.fetch_latency_s:
            await asyncio.sleep(self.fetch_latency_s)
        if ref.startswith("data:"):
            header, _, payload = ref.partition(",")
            return FetchedInput(base64.b64decode(payload), header[5:].split(";")[0], "data")
        async with self.http.get(ref) as response:
            if response.status != 200:
                raise InputError(field, f"HTTP {response.status}")
            return FetchedInput(await response.read(), response.content_type, ref)

    async def fetch_image(self, ref: str, *, field: str) -> Image.Image:
        fetched = await self.fetch_bytes(ref, field=field)
        try:
            image = Image.open(io.BytesIO(fetched.data))
            image.load()
        except OSError as exc:
            raise InputError(field, f"not an image: {exc}") from exc
        return image

    async def store_result(
        self, data: bytes, *, content_type: str, name: str, primary: bool = True
    ) -> StoredResult:
        if self.store_latency_s:
            await asyncio.sleep(self.store_latency_s)
        self.stored.append(StoredCall(name, content_type, data, primary))
        key = f"results/{self.kind}/{self.job_id}/{name}"
        return StoredResult(
            key=key, url=f"https://cdn.test/{key}", content_type=content_type, size=len(data)
        )

    async def progress(self, percent: float, stage: str | None = None) -> None:
        self.progress_reports.append((percent, stage))

    def gpu(self) -> Any:
        return self.gate.hold()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()
