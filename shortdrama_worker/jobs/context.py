"""The host's side of the handler contract: one job's ``JobContext``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from PIL import Image
from structlog.typing import FilteringBoundLogger

from shortdrama_worker.aws.results import ResultStore, ResultStoreError
from shortdrama_worker.aws.store import StaleTransition, StoreError, Task, TaskStore
from shortdrama_worker.contract import (
    FaceBox,
    FetchedInput,
    PermanentJobError,
    Provenance,
    StoredResult,
    TransientJobError,
    check_file,
    sniff_content_type,
)
from shortdrama_worker.faces.boxes import FaceDetector
from shortdrama_worker.inputs.fetch import InputFetcher, PixelHold, RefKind
from shortdrama_worker.jobs.gates import GpuSlots
from shortdrama_worker.metrics import Metrics
from shortdrama_worker.provenance import (
    SIGNED_TYPES,
    ContentCredentials,
    InputRecord,
    JobFacts,
    SigningError,
)


class RunContext:
    """One job's ``JobContext``."""

    def __init__(
        self,
        *,
        task: Task,
        owner: str,
        log: FilteringBoundLogger,
        settings: Any,
        metrics: Metrics,
        store: TaskStore,
        results: ResultStore,
        fetcher: InputFetcher,
        gpu_slots: GpuSlots,
        progress_interval_s: float,
        progress_delay_s: float = 0.0,
        faces: FaceDetector | None = None,
        credentials: ContentCredentials | None = None,
        provenance: Provenance | None = None,
    ) -> None:
        self.job_id = task.task_id
        self.kind = task.job_type
        self.attempt = task.attempts
        self.log = log
        self.settings = settings
        self.metrics = metrics
        self._task = task
        self._owner = owner
        self._store = store
        self._results = results
        self._fetcher = fetcher
        self._gpu = gpu_slots
        self._progress_interval = progress_interval_s
        self._faces = faces
        self._last_progress = 0.0
        self._last_stage: str | None = None
        self._quiet_until = time.monotonic() + progress_delay_s
        self._held: tuple[float, str | None] | None = None
        """Progress reported while quiet, written when the quiet spell ends."""
        self._flush: asyncio.Task[None] | None = None
        self._writing = asyncio.Lock()  # so a held value never lands after a newer one
        self.primary: StoredResult | None = None
        self.stored: list[StoredResult] = []
        self._credentials = credentials
        self._provenance = provenance or Provenance()
        # Every input fetched, in the order the handler asked for them: the
        # ingredients of the Content Credentials of each result image.
        self.inputs: list[InputRecord | None] = []
        # Decoded inputs stay in memory until the job ends, so their pixels
        # count against the process budget until then (``release``).
        self._pixels = PixelHold(fetcher.budget)
        self.gpu_seconds = 0.0
        """Time this job held a GPU slot: priced as ``gpu.seconds`` (``costs``)."""
        self.reuse_key: str | None = None
        self.reused: Task | None = None
        """The earlier job whose result answers this one (``reuse``)."""
        # Inputs fetched to compute the reuse key, handed to the handler's
        # first fetch of the same reference so nothing is downloaded twice.
        self._prefetched: dict[str, FetchedInput] = {}

    async def prefetch(self, ref: str, field: str, kind: RefKind) -> FetchedInput:
        """Fetch an input now and keep it for the handler's own fetch."""
        fetched = self._prefetched.get(ref)
        if fetched is None:
            started = time.monotonic()
            fetched = await self._fetcher.fetch(ref, field=field, kind=kind)
            self.metrics.observe_phase(self.kind, "fetch", time.monotonic() - started)
            self._prefetched[ref] = fetched
        return fetched

    async def fetch_file(
        self,
        ref: str,
        *,
        field: str,
        accept: Sequence[str],
        max_bytes: int | None = None,
    ) -> FetchedInput:
        started = time.monotonic()
        slot = self._input_slot()
        fetched = self._prefetched.pop(ref, None) or await self._fetcher.fetch(
            ref, field=field, kind="file"
        )
        limit = max_bytes or self._fetcher.settings.max_bytes
        sniffed = check_file(fetched.data, field=field, accept=accept, max_bytes=limit)
        self.metrics.observe_phase(self.kind, "fetch", time.monotonic() - started)
        self.inputs[slot] = InputRecord(field, fetched.data, sniffed)
        return FetchedInput(fetched.data, sniffed, fetched.source)

    async def fetch_image(
        self, ref: str, *, field: str, max_side: int | None = None
    ) -> Image.Image:
        started = time.monotonic()
        slot = self._input_slot()
        fetched, image = await self._fetcher.fetch_decoded(
            ref,
            field=field,
            hold=self._pixels,
            max_side=max_side,
            fetched=self._prefetched.pop(ref, None),
        )
        self.metrics.observe_phase(self.kind, "fetch", time.monotonic() - started)
        self.inputs[slot] = InputRecord(field, fetched.data, sniff_content_type(fetched.data))
        return image

    def _input_slot(self) -> int:
        # Taken before the first await, so concurrent fetches keep call order.
        self.inputs.append(None)
        return len(self.inputs) - 1

    async def detect_faces(self, image: Image.Image) -> list[FaceBox]:
        if self._faces is None:
            raise PermanentJobError(
                "this server has no local face detector: install shortdrama-worker[detector]",
                code="detector_unavailable",
            )
        return await self._faces.detect(image)

    async def store_result(
        self,
        data: bytes,
        *,
        content_type: str,
        name: str,
        primary: bool = True,
        provenance: Provenance | None = None,
    ) -> StoredResult:
        manifest_id = None
        if self._credentials is not None and content_type in SIGNED_TYPES:
            data, manifest_id = await self._sign(data, content_type, name, provenance)
        key = self._results.result_key(
            self.kind, self.job_id, self._task.created_at, self.attempt, name
        )
        started = time.monotonic()
        try:
            await self._results.put(key, data, content_type)
        except ResultStoreError as exc:
            # Never completed without a result: the job goes back for a retry.
            raise TransientJobError(str(exc), code="result_store_unavailable") from exc
        self.metrics.observe_phase(self.kind, "store", time.monotonic() - started)
        stored = StoredResult(
            key=key, content_type=content_type, size=len(data), manifest_id=manifest_id
        )
        self.stored.append(stored)
        if primary and self.primary is None:
            self.primary = stored
        return stored

    async def _sign(
        self, data: bytes, content_type: str, name: str, provenance: Provenance | None
    ) -> tuple[bytes, str]:
        assert self._credentials is not None
        facts = JobFacts(
            job_id=self.job_id,
            kind=self.kind,
            attempt=self.attempt,
            submitted_by=self._task.submitted_by,
            created_at=self._task.created_at,
            name=name,
        )
        inputs = [record for record in self.inputs if record is not None]
        started = time.monotonic()
        try:
            signed = await self._credentials.sign_async(
                data, content_type, facts, provenance or self._provenance, inputs
            )
        except SigningError as exc:
            # Deterministic for these bytes: a retry would fail the same way, and
            # an unsigned result must not leave when signing is on.
            raise PermanentJobError(
                f"{name}: Content Credentials could not be signed: {exc}",
                code="content_credentials_failed",
            ) from None
        self.metrics.observe_phase(self.kind, "sign", time.monotonic() - started)
        return signed.data, signed.manifest_id

    async def progress(self, percent: float, stage: str | None = None) -> None:
        now = time.monotonic()
        if now < self._quiet_until:
            # A short job's stages would cost a store write each and be read by no
            # one: hold the latest and write it once the attempt has run a while.
            kept = self._held[1] if self._held is not None else None
            self._held = (percent, stage if stage is not None else kept)
            if self._flush is None or self._flush.done():  # (a timer may fire a hair early)
                self._flush = asyncio.create_task(self._write_held(self._quiet_until - now))
            return
        self._held = None  # superseded
        await self._record(now, percent, stage)

    async def _write_held(self, after_s: float) -> None:
        await asyncio.sleep(after_s)
        held, self._held = self._held, None
        if held is not None:
            await self._record(time.monotonic(), *held)

    async def stop_progress(self) -> None:
        """The attempt is over: progress held back is dropped, never written after it."""
        flush, self._flush = self._flush, None
        if flush is not None:
            flush.cancel()
            await asyncio.gather(flush, return_exceptions=True)

    async def _record(self, now: float, percent: float, stage: str | None) -> None:
        same_stage = stage is None or stage == self._last_stage
        if percent < 100 and same_stage and now - self._last_progress < self._progress_interval:
            # Progress is advisory; the store is not a message bus. A new stage
            # always goes through: there are few, and each tells the user something.
            return
        self._last_progress = now
        if stage is not None:
            self._last_stage = stage
        try:
            async with self._writing:
                await self._store.set_progress(
                    self.job_id, self._owner, max(0.0, min(100.0, percent)), stage
                )
        except (StoreError, StaleTransition) as exc:
            self.log.warning("progress_not_recorded", error=str(exc))

    def release(self) -> None:
        """The job is over: its decoded inputs no longer count against the budget."""
        self._pixels.release()
        if self._flush is not None:  # the run itself was cancelled before stop_progress
            self._flush.cancel()

    def gpu(self) -> AbstractAsyncContextManager[None]:
        return self._timed_gpu()

    @asynccontextmanager
    async def _timed_gpu(self) -> AsyncIterator[None]:
        async with self._gpu.hold(self.kind):
            started = time.monotonic()
            try:
                yield
            finally:
                self.gpu_seconds += time.monotonic() - started
