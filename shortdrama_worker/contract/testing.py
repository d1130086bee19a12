"""A testing kit for plugin authors: run a handler without AWS, a queue or the daemon.

``FakeJobContext`` implements ``JobContext`` the way the host does where it
matters to a handler — inputs are really fetched (``data:`` URIs, or HTTP
through a session the test passes) and sniffed, images decoded with the
host's format allow-list, ``gpu()`` is a real semaphore — and records what
the handler did: progress, stored files, GPU hold intervals. ``make_env``
builds the ``HandlerEnv`` a handler's constructor takes, validating a
settings section as the host would.

    async def test_echo() -> None:
        handler = EchoHandler(make_env(EchoHandler, {"prefix": ">"}))
        ctx = FakeJobContext(kind="echo")
        result = await handler.run(EchoInput(text="hi"), ctx)
        assert ctx.stored[0].name == "echo.json"
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import unquote_to_bytes

import aiohttp
import structlog
from PIL import Image, ImageOps
from pydantic import BaseModel
from structlog.typing import FilteringBoundLogger

from shortdrama_worker.contract.context import PluginMetrics
from shortdrama_worker.contract.errors import InputError
from shortdrama_worker.contract.fields import IMAGE_TYPES
from shortdrama_worker.contract.handler import Handler, HandlerEnv
from shortdrama_worker.contract.sniff import check_file
from shortdrama_worker.contract.values import FaceBox, FetchedInput, Provenance, StoredResult

SettingsT = TypeVar("SettingsT", bound=BaseModel)

_PIL_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}


@dataclass
class RecordedMetrics:
    """A ``PluginMetrics`` that keeps what was recorded, for assertions."""

    phases: list[tuple[str, str, float]] = field(default_factory=list)
    provider_calls: list[tuple[str, str, bool]] = field(default_factory=list)
    usage: dict[tuple[str, str], float] = field(default_factory=dict)

    def observe_phase(self, kind: str, phase: str, seconds: float) -> None:
        self.phases.append((kind, phase, seconds))

    def observe_provider_call(
        self, provider: str, status_class: str, seconds: float, *, failed: bool
    ) -> None:
        self.provider_calls.append((provider, status_class, failed))

    def count_provider_usage(self, provider: str, unit: str, amount: float) -> None:
        self.usage[(provider, unit)] = self.usage.get((provider, unit), 0.0) + amount


def make_env(
    handler: type[Handler[Any, SettingsT]],
    settings: Mapping[str, Any] | BaseModel | None = None,
    *,
    kind: str = "test",
    service_http: aiohttp.ClientSession | None = None,
    metrics: PluginMetrics | None = None,
) -> HandlerEnv[SettingsT]:
    """The ``HandlerEnv`` the host would build, with ``settings`` validated once.

    ``settings`` is the handler's settings section as a mapping (as in the
    config file), or an instance of its ``settings_model``. ``service_http``
    is required only by handlers that call a back end; pass a session whose
    lifetime the test manages.
    """
    model = handler.settings_model
    section: Any = (
        settings if isinstance(settings, model) else model.model_validate(_plain(settings))
    )
    return HandlerEnv(
        kind=kind,
        settings=section,
        log=structlog.get_logger(f"test.{kind}"),
        metrics=metrics or RecordedMetrics(),
        service_http=service_http if service_http is not None else _NoSession(),  # type: ignore[arg-type]
    )


def _plain(settings: Mapping[str, Any] | BaseModel | None) -> dict[str, Any]:
    if isinstance(settings, BaseModel):
        return settings.model_dump()
    return dict(settings or {})


class _NoSession:
    """Stands in for ``service_http`` when a test gives none: any use says so."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError("this handler uses service_http; pass make_env(service_http=...)")


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
    """One ``store_result`` call."""

    name: str
    content_type: str
    data: bytes
    primary: bool
    key: str
    provenance: Provenance | None = None


Detector = Callable[[Image.Image], Awaitable[list[FaceBox]]]


@dataclass
class FakeJobContext:
    """Implements ``JobContext`` for a handler's own tests."""

    kind: str = "test"
    job_id: str = "job-0001"
    attempt: int = 1
    http: aiohttp.ClientSession | None = None
    """Fetches ``http(s)://`` references (no address guard: tests only)."""
    detector: Detector | None = None
    """What ``detect_faces`` answers; without one it raises."""
    gate: GpuGate = field(default_factory=GpuGate)
    metrics: PluginMetrics = field(default_factory=RecordedMetrics)
    max_bytes: int = 25 * 1024 * 1024
    max_pixels: int = 80_000_000
    fetch_latency_s: float = 0.0
    store_latency_s: float = 0.0
    progress_reports: list[tuple[float, str | None]] = field(default_factory=list)
    stored: list[StoredCall] = field(default_factory=list)
    log: FilteringBoundLogger = field(default_factory=lambda: structlog.get_logger("test"))

    async def fetch_file(
        self,
        ref: str,
        *,
        field: str,
        accept: Sequence[str],
        max_bytes: int | None = None,
    ) -> FetchedInput:
        fetched = await self._fetch(ref, field)
        limit = max_bytes or self.max_bytes
        sniffed = check_file(fetched.data, field=field, accept=accept, max_bytes=limit)
        return FetchedInput(fetched.data, sniffed, fetched.source)

    async def fetch_image(
        self, ref: str, *, field: str, max_side: int | None = None
    ) -> Image.Image:
        fetched = await self.fetch_file(ref, field=field, accept=IMAGE_TYPES)
        assert fetched.content_type is not None
        try:
            with warnings.catch_warnings():
                # The explicit pixel check below is the limit, not Pillow's warning.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(
                    io.BytesIO(fetched.data), formats=[_PIL_FORMATS[fetched.content_type]]
                )
            if image.width * image.height > self.max_pixels:
                raise InputError(field, f"more than {self.max_pixels} pixels")
            image.load()
        except (OSError, Image.DecompressionBombError) as exc:
            raise InputError(field, f"not a readable image: {exc}") from exc
        return ImageOps.exif_transpose(image)

    async def detect_faces(self, image: Image.Image) -> list[FaceBox]:
        if self.detector is None:
            raise RuntimeError("detect_faces needs FakeJobContext(detector=...)")
        return await self.detector(image)

    async def store_result(
        self,
        data: bytes,
        *,
        content_type: str,
        name: str,
        primary: bool = True,
        provenance: Provenance | None = None,
    ) -> StoredResult:
        if self.store_latency_s:
            await asyncio.sleep(self.store_latency_s)
        key = f"results/{self.kind}/{self.job_id}/{self.attempt}/{name}"
        self.stored.append(StoredCall(name, content_type, data, primary, key, provenance))
        return StoredResult(key=key, content_type=content_type, size=len(data))

    async def progress(self, percent: float, stage: str | None = None) -> None:
        self.progress_reports.append((percent, stage))

    def gpu(self) -> Any:
        return self.gate.hold()

    async def _fetch(self, ref: str, field: str) -> FetchedInput:
        if self.fetch_latency_s:
            await asyncio.sleep(self.fetch_latency_s)
        if ref.startswith("data:"):
            return _data_uri(ref, field)
        if ref.startswith(("http://", "https://")) and self.http is not None:
            async with self.http.get(ref) as response:
                if response.status != 200:
                    raise InputError(field, f"HTTP {response.status}")
                return FetchedInput(await response.read(), response.content_type, ref)
        raise InputError(field, "FakeJobContext fetches data: URIs, and http(s) with http=...")


def _data_uri(ref: str, field: str) -> FetchedInput:
    header, sep, payload = ref.partition(",")
    if not sep:
        raise InputError(field, "malformed data: URI")
    try:
        data = (
            base64.b64decode(payload, validate=True)
            if header.endswith(";base64")
            else unquote_to_bytes(payload)
        )
    except (binascii.Error, ValueError):
        raise InputError(field, "data: URI is not valid base64") from None
    return FetchedInput(data, header[5:].split(";")[0] or None, "data:")


def data_uri(data: bytes, content_type: str = "image/png") -> str:
    """``data`` as a ``data:`` URI, the simplest reference to hand a handler in a test."""
    return f"data:{content_type};base64," + base64.b64encode(data).decode()
