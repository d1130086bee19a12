"""The three concurrency gates of a process, in one place.

* **per resource** (``consumer.max_in_flight``): how many jobs of the ``cpu``
  and of the ``gpu`` queue run at once; the consumer takes a message only
  when its resource has a free run slot.
* **per kind** (``consumer.kind_concurrency``): an optional cap for one kind
  inside its resource (a provider's rate limit, a memory-hungry model).
* **the GPU gate** (``gpu.slots``): what a handler holds with ``ctx.gpu()``
  around its GPU-bound section only, so downloads and uploads of the next job
  overlap this one's compute.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from shortdrama_worker.metrics import Metrics
from shortdrama_worker.settings import Resource, Settings


class GpuSlots:
    """The GPU gate: ``slots`` permits shared by every GPU job of the process."""

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


class Gates:
    """The run slots per resource, the caps per kind, and the GPU gate."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        c = settings.consumer
        self.run_slots: dict[Resource, asyncio.Semaphore] = {
            resource: asyncio.Semaphore(n) for resource, n in c.max_in_flight.items()
        }
        self._kind_caps = {kind: asyncio.Semaphore(n) for kind, n in c.kind_concurrency.items()}
        self.gpu = GpuSlots(settings.gpu.slots, metrics)

    def kind_cap(self, kind: str) -> AbstractAsyncContextManager[object]:
        """Hold ``kind``'s cap, if it has one."""
        cap = self._kind_caps.get(kind)
        return cap if cap is not None else contextlib.nullcontext()
