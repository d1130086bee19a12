"""The handler plugin contract.

A handler is a class registered under the entry-point group
``shortdrama_worker.handlers``; the entry-point name is its *kind*. The host
instantiates it once per application with its own settings section and calls
``run(params, ctx)`` for each job. Everything a handler may touch arrives
through ``HandlerEnv`` (at start-up) and ``JobContext`` (per job): it never
reaches for AWS clients, the store or the queue itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

import aiohttp
from PIL import Image
from pydantic import BaseModel, ConfigDict
from structlog.typing import FilteringBoundLogger

Resource = Literal["gpu", "cpu"]

# A dependency's health as shown by /health: "healthy" or "degraded".
Health = Literal["healthy", "degraded"]


class HandlerInput(BaseModel):
    """Base for handler input models: unknown fields are an error, not ignored."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class StoredResult:
    """A file written to the results bucket."""

    key: str
    url: str
    content_type: str
    size: int


@dataclass(frozen=True)
class FetchedInput:
    """Raw bytes of an input with what the fetcher learned about them."""

    data: bytes
    content_type: str | None
    source: str


class JobContext(Protocol):
    """What a running job may use. Implemented by the host."""

    job_id: str
    kind: str
    attempt: int
    log: FilteringBoundLogger
    http: aiohttp.ClientSession
    settings: Any
    metrics: Any
    """The host's ``Metrics``; handlers observe their own phase timings on it."""

    async def fetch_bytes(self, ref: str, *, field: str) -> FetchedInput:
        """Fetch an ``https://``, ``s3://`` or ``data:`` input within the size and time limits."""
        ...

    async def fetch_image(self, ref: str, *, field: str) -> Image.Image:
        """Fetch and decode an image input, EXIF orientation applied, pixel limit checked."""
        ...

    async def store_result(
        self, data: bytes, *, content_type: str, name: str, primary: bool = True
    ) -> StoredResult:
        """Write a result file; the first primary one becomes the job's ``result_url``."""
        ...

    async def progress(self, percent: float, stage: str | None = None) -> None:
        """Report progress (0–100); written to the task record, throttled."""
        ...

    def gpu(self) -> AbstractAsyncContextManager[None]:
        """Hold one GPU slot; use it only around the GPU-bound section."""
        ...


@dataclass(frozen=True)
class HandlerEnv:
    """What a handler gets once, when the application starts."""

    kind: str
    http: aiohttp.ClientSession
    log: FilteringBoundLogger
    settings: Any
    """The handler's ``settings_model`` instance, or the raw section if it has none."""
    metrics: Any


class Handler:
    """Base class for handlers. Subclasses set the class attributes and ``run``.

    ``slug`` defaults to the kind in kebab-case. ``timeout_s`` bounds one run;
    a run that exceeds it fails permanently (a job that timed out once will
    time out again). ``startup``/``shutdown``/``health`` are optional hooks.
    """

    slug: ClassVar[str | None] = None
    resource: ClassVar[Resource] = "cpu"
    input_model: ClassVar[type[BaseModel]]
    timeout_s: ClassVar[float] = 600.0
    description: ClassVar[str] = ""
    settings_model: ClassVar[type[BaseModel] | None] = None
    """Validates ``[handlers.options.<kind>]``; errors stop start-up."""

    def __init__(self, env: HandlerEnv) -> None:
        self.env = env

    async def startup(self) -> None:
        """Open what the handler needs (clients, models). Errors stop start-up."""

    async def shutdown(self) -> None:
        """Release what ``startup`` opened."""

    async def health(self) -> Mapping[str, Health]:
        """Named dependency checks shown on /health."""
        return {}

    def ready(self) -> bool:
        """Whether this handler can take work now (feeds /ready)."""
        return True

    async def run(self, params: Any, ctx: JobContext) -> dict[str, Any]:
        """Do the job. Return a JSON-able result dict; raise ``JobError`` to fail."""
        raise NotImplementedError
