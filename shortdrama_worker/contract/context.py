"""``JobContext``: everything a running job may use, implemented by the host.

A handler never reaches for AWS clients, the store, the queue or an HTTP
session of its own to fetch job inputs: references are fetched through the
context, which enforces the host's address guard, size limits and formats.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from PIL import Image
from structlog.typing import FilteringBoundLogger

from shortdrama_worker.contract.values import FaceBox, FetchedInput, Provenance, StoredResult


class PluginMetrics(Protocol):
    """The metrics a handler may record. Labels stay bounded: never ids."""

    def observe_phase(self, kind: str, phase: str, seconds: float) -> None:
        """Time one phase of a job (``fetch``, ``execute``, ``encode`` …)."""
        ...

    def observe_provider_call(
        self, provider: str, status_class: str, seconds: float, *, failed: bool
    ) -> None:
        """Time a call to an external back end; ``failed`` also counts an error."""
        ...

    def count_provider_usage(self, provider: str, unit: str, amount: float) -> None:
        """Count billable usage (tokens, images, seconds) of a provider."""
        ...


class JobContext(Protocol):
    """What a running job may use."""

    job_id: str
    kind: str
    attempt: int

    @property
    def log(self) -> FilteringBoundLogger:
        """A logger bound to this job (``job_id``, ``kind``, ``attempt``)."""
        ...

    @property
    def metrics(self) -> PluginMetrics:
        """The metrics a handler may record on."""
        ...

    async def fetch_image(
        self, ref: str, *, field: str, max_side: int | None = None
    ) -> Image.Image:
        """Fetch and decode an image reference.

        EXIF orientation applied; the host's pixel limit and format allow-list
        checked. ``max_side`` lets the decoder work at a reduced size where the
        format allows it (the image may still be larger; resize to be exact).
        """
        ...

    async def fetch_file(
        self,
        ref: str,
        *,
        field: str,
        accept: Sequence[str],
        max_bytes: int | None = None,
    ) -> FetchedInput:
        """Fetch a file reference; its type is sniffed and must be in ``accept``."""
        ...

    async def detect_faces(self, image: Image.Image) -> list[FaceBox]:
        """Faces in ``image`` by the host's local detector, in ``face_index`` order."""
        ...

    async def store_result(
        self,
        data: bytes,
        *,
        content_type: str,
        name: str,
        primary: bool = True,
        provenance: Provenance | None = None,
    ) -> StoredResult:
        """Write a result file; the first primary one becomes the job's ``result_url``.

        PNG, JPEG and WebP files are signed with Content Credentials by the host
        (unless its operator turned that off); ``provenance`` says how this file
        was made, when it differs from the handler's ``provenance``.
        """
        ...

    async def progress(self, percent: float, stage: str | None = None) -> None:
        """Report progress (0–100) and the current stage; throttled by the host."""
        ...

    def gpu(self) -> AbstractAsyncContextManager[None]:
        """Hold one GPU slot; use it only around the GPU-bound section."""
        ...
