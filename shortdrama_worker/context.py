"""The host's side of the handler contract: ``JobContext`` and the GPU slots."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from PIL import Image
from structlog.typing import FilteringBoundLogger

from shortdrama_worker.errors import TransientJobError
from shortdrama_worker.handlers.base import FetchedInput, StoredResult
from shortdrama_worker.inputs import InputFetcher, PixelHold
from shortdrama_worker.metrics import Metrics
from shortdrama_worker.results import ResultStore, ResultStoreError
from shortdrama_worker.store import StaleTransition, StoreError, Task, TaskStore


class GpuSlots:
    """The GPU semaphore: ``slots`` permits shared by every GPU job of the process."""

    def __init__(self, slots: int, metrics: Metrics) -> None:
        self.slots = slots
        self._sem = asyncio.Semaphore(slots)
        self._metrics = metrics
        self.in_use = 0
        metrics.gpu_slots.set(slots)

    @asynccontextmanager
    async def hold(self, kind: str) -> AsyncIterator[None]:
        started = time.monotonic()
        async with self._sem:
            acquired = time.monotonic()
            self._metrics.gpu_wait.labels(kind).observe(acquired - started)
            self.in_use += 1
            self._metrics.gpu_slots_in_use.set(self.in_use)
            try:
                yield
            finally:
                self.in_use -= 1
                self._metrics.gpu_slots_in_use.set(self.in_use)
                self._metrics.gpu_busy.inc(time.monotonic() - acquired)


class RunContext:
    """One job's ``JobContext``."""

    def __init__(
        self,
        *,
        task: Task,
        owner: str,
        log: FilteringBoundLogger,
        http: aiohttp.ClientSession,
        settings: Any,
        metrics: Metrics,
        store: TaskStore,
        results: ResultStore,
        fetcher: InputFetcher,
        gpu_slots: GpuSlots,
        progress_interval_s: float,
    ) -> None:
        self.job_id = task.task_id
        self.kind = task.job_type
        self.attempt = task.attempts
        self.log = log
        self.http = http
        self.settings = settings
        self.metrics = metrics
        self._task = task
        self._owner = owner
        self._store = store
        self._results = results
        self._fetcher = fetcher
        self._gpu = gpu_slots
        self._progress_interval = progress_interval_s
        self._last_progress = 0.0
        self.primary: StoredResult | None = None
        self.stored: list[StoredResult] = []
        # Decoded inputs stay in memory until the job ends, so their pixels
        # count against the process budget until then (``release``).
        self._pixels = PixelHold(fetcher.budget)

    async def fetch_bytes(self, ref: str, *, field: str) -> FetchedInput:
        return await self._fetcher.fetch(ref, field=field)

    async def fetch_image(self, ref: str, *, field: str) -> Image.Image:
        started = time.monotonic()
        image = await self._fetcher.fetch_image(ref, field=field, hold=self._pixels)
        self.metrics.phase_duration.labels(self.kind, "fetch").observe(time.monotonic() - started)
        return image

    async def store_result(
        self, data: bytes, *, content_type: str, name: str, primary: bool = True
    ) -> StoredResult:
        key = self._results.result_key(
            self.kind, self.job_id, self._task.created_at, self.attempt, name
        )
        started = time.monotonic()
        try:
            await self._results.put(key, data, content_type)
        except ResultStoreError as exc:
            # Never completed without a result: the job goes back for a retry.
            raise TransientJobError(str(exc), code="result_store_unavailable") from exc
        self.metrics.phase_duration.labels(self.kind, "store").observe(time.monotonic() - started)
        stored = StoredResult(
            key=key, url=await self._results.url(key), content_type=content_type, size=len(data)
        )
        self.stored.append(stored)
        if primary and self.primary is None:
            self.primary = stored
        return stored

    async def progress(self, percent: float, stage: str | None = None) -> None:
        now = time.monotonic()
        if percent < 100 and now - self._last_progress < self._progress_interval:
            return  # progress is advisory; the store is not a message bus
        self._last_progress = now
        try:
            await self._store.set_progress(
                self.job_id, self._owner, max(0.0, min(100.0, percent)), stage
            )
        except (StoreError, StaleTransition) as exc:
            self.log.warning("progress_not_recorded", error=str(exc))

    def release(self) -> None:
        """The job is over: its decoded inputs no longer count against the budget."""
        self._pixels.release()

    def gpu(self) -> Any:
        return self._gpu.hold(self.kind)
