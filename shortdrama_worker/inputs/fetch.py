"""Fetching and decoding input images: ``https://``, ``s3://`` and ``data:`` URIs.

Every failure names the field. A fetch that may work later (connection
refused, 5xx, timeout) is transient; anything the editor must fix (404, not
an image, too large, a URL that may never be fetched) is permanent.

Only PNG, JPEG and WebP are decoded (``ACCEPTED_FORMATS``): Pillow can read
some forty formats, several through large or external decoders (EPS runs
Ghostscript), and none of the others is what editors send.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import io
import re
import uuid
import warnings
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote_to_bytes

import aiohttp
import yarl
from botocore.exceptions import BotoCoreError, ClientError
from PIL import Image, ImageOps, UnidentifiedImageError

from shortdrama_worker.aws.clients import error_code
from shortdrama_worker.contract import FetchedInput, Reference
from shortdrama_worker.contract.errors import InputError, InputUnavailableError
from shortdrama_worker.inputs.netguard import (
    AddressPolicy,
    AddressRefused,
    UrlRefused,
    refusal_of,
    web_target,
)
from shortdrama_worker.settings import InputSettings, ResultSettings

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")
_FORMAT_NAMES = "PNG, JPEG or WebP"
# Below this a side is a sliver, not a picture: detectors and scalers fail on it.
MIN_SIDE = 8

RefKind = Literal["image", "file"]

_DATA_URI = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]+)*),(?P<data>.*)$", re.S
)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# Statuses after which asking again will not help.
_PERMANENT_HTTP = {400, 401, 403, 404, 405, 410, 414, 451}


def parse_data_uri(
    ref: str, field: str, max_bytes: int, *, kind: RefKind = "image"
) -> FetchedInput:
    """Decode a ``data:…;base64,…`` URI (``data:image/…`` for an image reference)."""
    match = _DATA_URI.match(ref)
    if not match:
        raise InputError(field, "malformed data: URI")
    mime = (match["mime"] or "text/plain").lower()
    if kind == "image" and not mime.startswith("image/"):
        raise InputError(field, f"data: URI has media type {mime}, expected image/*")
    payload = match["data"]
    # base64 grows data by 4/3; refuse before decoding a huge string.
    if len(payload) * 3 // 4 > max_bytes:
        raise InputError(field, f"image larger than {max_bytes} bytes", code="input_too_large")
    try:
        if ";base64" in (match["params"] or ""):
            data = base64.b64decode(payload, validate=True)
        else:
            data = unquote_to_bytes(payload)
    except (binascii.Error, ValueError):
        raise InputError(field, "data: URI is not valid base64") from None
    return FetchedInput(data=data, content_type=mime, source="data:")


def ref_scheme(ref: str) -> str:
    """The lower-case scheme of a reference, ``""`` if it has none.

    The API, the field validator and the fetcher all dispatch on this, so
    ``HTTPS://`` or ``S3://`` cannot take a path that skips a check.
    """
    match = _SCHEME.match(ref)
    return match[1].lower() if match else ""


def shown(ref: str) -> str:
    """A reference as it may appear in messages and logs: no credentials, bounded length."""
    text = _USERINFO.sub(r"\1", ref)
    return text if len(text) <= 300 else text[:300] + "…"


def check_ref(ref: str, *, allow_http: bool, kind: RefKind = "image") -> str | None:
    """Why ``ref`` cannot be an input reference, or ``None`` if its form is acceptable."""
    if ref != ref.strip():
        return "reference has leading or trailing whitespace"
    scheme = ref_scheme(ref)
    if scheme == "data":
        if kind == "file" or ref.startswith("data:image/"):
            return None
        return "data: URI must be an image/* type"
    if scheme == "https" or (scheme == "http" and allow_http):
        try:
            web_target(ref, allow_http=True)
        except UrlRefused as exc:
            return exc.reason
        return None
    if scheme == "s3":
        return s3_location(ref)[2]
    allowed = "https://, s3:// or data:image/" + (", http://" if allow_http else "")
    return f"unsupported scheme {scheme or '(none)'!r}; use {allowed}"


def s3_location(ref: str) -> tuple[str, str, str | None]:
    """Bucket, key, and why the reference is unusable (``None`` if it is fine)."""
    bucket, _, key = ref[len("s3://") :].partition("/")
    if ref[:5].lower() != "s3://" or not bucket or not key:
        return bucket, key, "s3:// URI needs bucket and key"
    if not _BUCKET.match(bucket):
        return bucket, key, f"{bucket!r} is not a valid bucket name"
    # Keys are opaque to S3, but some HTTP layers fold dot segments; a key
    # with them could name one object and fetch another.
    if any(part in ("", ".", "..") for part in key.split("/")) or "\\" in key:
        return bucket, key, "s3:// key may not have empty, '.' or '..' segments"
    return bucket, key, None


@dataclass(frozen=True)
class S3Object:
    bucket: str
    key: str
    job_id: str | None
    """The job the object belongs to (results bucket); ``None`` for an operator's bucket."""


class InputRules:
    """What an input reference may be: the one place the API and the fetcher ask.

    The API applies these at submit (with the key's ownership of ``s3://``
    objects on top); the fetcher applies them again at run time and to every
    redirect hop, so a job queued before a setting changed is judged by today's
    rules.
    """

    def __init__(
        self, settings: InputSettings, policy: AddressPolicy, results: ResultSettings
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.results_bucket = results.bucket
        self.operator_buckets = frozenset(settings.s3_buckets)
        self._input_prefix = [p for p in results.input_prefix.split("/") if p]
        self._result_prefix = [p for p in results.prefix.split("/") if p]

    def web_url(self, ref: str | yarl.URL, field: str) -> yarl.URL:
        """The URL to fetch, normalised as aiohttp reads it; ``InputError`` if it may not be."""
        scheme = ref.scheme if isinstance(ref, yarl.URL) else ref_scheme(ref)
        if scheme == "http" and not self.settings.allow_http:
            raise InputError(field, "http:// inputs are not allowed here; use https://")
        try:
            url = web_target(ref, allow_http=True)
        except UrlRefused as exc:
            raise InputError(field, f"{shown(str(ref))}: {exc.reason}", code=exc.code) from None
        reason = self.policy.url_refusal(url)
        if reason:
            raise InputError(field, f"{url} refused: {reason}", code="address_refused")
        return url

    def s3_object(self, ref: str, field: str) -> S3Object:
        """The object an ``s3://`` reference names; ``InputError`` if no key may read it."""
        bucket, key, problem = s3_location(ref)
        if problem:
            raise InputError(field, problem)
        if bucket in self.operator_buckets:
            return S3Object(bucket, key, None)
        if bucket != self.results_bucket:
            raise InputError(field, f"bucket {bucket!r} is not one inputs may be read from")
        job_id = self._job_of(key.split("/"))
        if job_id is None:
            raise InputError(
                field, f"{shown(ref)} is not a staged input or a result of a job", code="forbidden"
            )
        return S3Object(bucket, key, job_id)

    def _job_of(self, parts: list[str]) -> str | None:
        """The job id in a results-bucket key laid out by ``ResultStore``, else ``None``."""
        inputs, results = self._input_prefix, self._result_prefix
        # {input_prefix}/{job_id}/{submit}/{field}
        if parts[: len(inputs)] == inputs and len(parts) == len(inputs) + 3:
            return _job_id(parts[len(inputs)])
        # {prefix}/{kind}/{YYYY}/{MM}/{DD}/{job_id}/{attempt}/{name}
        if parts[: len(results)] == results and len(parts) == len(results) + 7:
            return _job_id(parts[len(results) + 4])
        return None

    def check(self, ref: str, field: str) -> S3Object | None:
        """Every rule that can be judged without fetching; the ``s3://`` object if it is one."""
        problem = check_ref(ref, allow_http=self.settings.allow_http)
        scheme = ref_scheme(ref)
        if scheme in ("http", "https"):
            self.web_url(ref, field)  # names http:// and address refusals precisely
        if problem:
            raise InputError(field, problem)
        return self.s3_object(ref, field) if scheme == "s3" else None


def _job_id(text: str) -> str | None:
    try:
        return str(uuid.UUID(text)) if len(text) == 36 else None
    except ValueError:
        return None


class PixelBudget:
    """Decoded pixels in flight across the process: a weighted, first-come semaphore.

    A job's first image waits until the budget has room for it; further images
    of a job that already holds pixels are admitted at once (they may overdraw),
    so two jobs each holding one image and waiting for a second cannot deadlock.
    A request larger than the whole budget is admitted alone.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    async def acquire(self, pixels: int, *, wait: bool = True) -> int:
        weight = max(1, min(pixels, self.capacity))
        if not wait or (not self._waiters and self.in_use + weight <= self.capacity):
            self.in_use += weight
            return weight
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (weight, future)
        self._waiters.append(entry)
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():
                self.release(weight)  # admitted, then cancelled before it ran
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
                self._wake()
            raise
        return weight

    def release(self, weight: int) -> None:
        self.in_use -= weight
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            weight, future = self._waiters[0]
            if future.done():
                self._waiters.popleft()
                continue
            if self.in_use + weight > self.capacity:
                return
            self._waiters.popleft()
            self.in_use += weight
            future.set_result(None)


class PixelHold:
    """The pixels one job holds; released together when the job ends."""

    def __init__(self, budget: PixelBudget) -> None:
        self.budget = budget
        self.held = 0

    async def take(self, pixels: int) -> None:
        self.held += await self.budget.acquire(pixels, wait=self.held == 0)

    def release(self) -> None:
        if self.held:
            self.budget.release(self.held)
            self.held = 0


def reference_problem(ref: str, reference: Reference) -> str | None:
    """The host's reference policy for the edge, passed to input validation."""
    # http:// is refused or allowed by the fetcher's setting at run time; the
    # edge accepts it so that setting stays the one place that decides.
    return check_ref(ref, allow_http=True, kind=reference.kind)


class InputFetcher:
    """Fetches inputs within the configured byte, time and pixel limits."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        s3: Any,
        rules: InputRules,
        budget: PixelBudget,
    ) -> None:
        # ``http`` must be a ``netguard.guarded_session`` applying ``rules.policy``.
        self._http = http
        self._s3 = s3
        self.rules = rules
        self.settings = rules.settings
        self.budget = budget

    async def fetch(self, ref: str, *, field: str, kind: RefKind = "image") -> FetchedInput:
        problem = check_ref(ref, allow_http=self.settings.allow_http, kind=kind)
        scheme = ref_scheme(ref)
        if problem and scheme not in ("http", "https"):
            raise InputError(field, problem)
        if scheme == "data":
            return parse_data_uri(ref, field, self.settings.max_bytes, kind=kind)
        if scheme == "s3":
            return await self._fetch_s3(ref, field)
        return await self._fetch_http(self.rules.web_url(ref, field), field)

    async def fetch_image(
        self, ref: str, *, field: str, hold: PixelHold | None = None, max_side: int | None = None
    ) -> Image.Image:
        return (await self.fetch_decoded(ref, field=field, hold=hold, max_side=max_side))[1]

    async def fetch_decoded(
        self,
        ref: str,
        *,
        field: str,
        hold: PixelHold | None = None,
        max_side: int | None = None,
        fetched: FetchedInput | None = None,
    ) -> tuple[FetchedInput, Image.Image]:
        """The image's bytes as fetched (for provenance) and the image decoded.

        The decoded pixels count against the process budget via ``hold``.
        ``max_side``: the largest side the caller will use; JPEG decodes at the
        smallest scale that still covers it (never smaller). ``fetched``: the
        bytes, when they were fetched already (to compute a reuse key).
        """
        if fetched is None:
            fetched = await self.fetch(ref, field=field)
        width, height = probe_image(fetched.data, field, self.settings.max_pixels)
        if max_side is not None:
            width, height = draft_size((width, height), max_side)
        owned = hold or PixelHold(self.budget)
        await owned.take(width * height)
        try:
            image = await asyncio.to_thread(
                decode_image, fetched.data, field, self.settings.max_pixels, max_side=max_side
            )
        finally:
            if hold is None:
                owned.release()
        return fetched, image

    async def _fetch_http(self, url: yarl.URL, field: str) -> FetchedInput:
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout_s)
        start = url
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                for _ in range(self.settings.max_redirects + 1):
                    async with self._http.get(url, timeout=timeout, allow_redirects=False) as resp:
                        location = resp.headers.get("Location")
                        if resp.status in (301, 302, 303, 307, 308) and location:
                            url = self._next_hop(resp.url, location, field)
                            continue
                        return await self._read(resp, str(url), field)
                raise InputError(
                    field, f"{start} redirects more than {self.settings.max_redirects} times"
                )
        except TimeoutError:
            raise InputUnavailableError(
                field, f"{url} did not answer within {self.settings.timeout_s:g} s"
            ) from None
        except (aiohttp.ClientError, AddressRefused) as exc:
            refused = refusal_of(exc)
            if refused is not None:
                raise InputError(
                    field, f"{url} refused: {refused.reason}", code="address_refused"
                ) from None
            if isinstance(exc, aiohttp.InvalidURL):
                raise InputError(field, f"{url}: not a valid URL") from None
            raise InputUnavailableError(field, f"{url} unreachable: {exc}") from None

    def _next_hop(self, current: yarl.URL, location: str, field: str) -> yarl.URL:
        """Where a redirect leads, judged by the same rules as the first URL."""
        try:
            target = current.join(yarl.URL(location))
        except (ValueError, UnicodeError):
            raise InputError(field, f"{current} redirects to an invalid URL") from None
        if target.scheme not in ("http", "https"):
            raise InputError(field, f"{current} redirects to a non-HTTP URL")
        return self.rules.web_url(target, field)

    async def _read(self, resp: aiohttp.ClientResponse, url: str, field: str) -> FetchedInput:
        limit = self.settings.max_bytes
        if resp.status in _PERMANENT_HTTP:
            raise InputError(field, f"{url} answered HTTP {resp.status}")
        if resp.status >= 400:
            raise InputUnavailableError(field, f"{url} answered HTTP {resp.status}")
        if resp.content_length is not None and resp.content_length > limit:
            raise InputError(field, f"{url} is larger than {limit} bytes", code="input_too_large")
        content_type = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type and not (
            content_type.startswith("image/") or content_type == "application/octet-stream"
        ):
            raise InputError(field, f"{url} is {content_type}, not an image")
        chunks = []
        size = 0
        async for chunk in resp.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > limit:
                raise InputError(
                    field, f"{url} is larger than {limit} bytes", code="input_too_large"
                )
            chunks.append(chunk)
        return FetchedInput(data=b"".join(chunks), content_type=content_type or None, source=url)

    async def _fetch_s3(self, ref: str, field: str) -> FetchedInput:
        obj_ref = self.rules.s3_object(ref, field)
        bucket, key = obj_ref.bucket, obj_ref.key
        limit = self.settings.max_bytes
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                obj = await self._s3.get_object(Bucket=bucket, Key=key)
                if obj.get("ContentLength", 0) > limit:
                    raise InputError(
                        field, f"{ref} is larger than {limit} bytes", code="input_too_large"
                    )
                async with obj["Body"] as body:
                    data = await body.read()
        except TimeoutError:
            raise InputUnavailableError(
                field, f"{ref} not read within {self.settings.timeout_s:g} s"
            ) from None
        except ClientError as exc:
            code = error_code(exc)
            if code in ("NoSuchKey", "NoSuchBucket", "404", "AccessDenied", "403"):
                raise InputError(field, f"{ref}: {code}") from None
            raise InputUnavailableError(field, f"{ref}: {code or exc}") from None
        except (BotoCoreError, OSError) as exc:
            raise InputUnavailableError(field, f"{ref} unreachable: {exc}") from None
        return FetchedInput(data=data, content_type=obj.get("ContentType"), source=ref)


def _open(data: bytes, field: str) -> Image.Image:
    """Open (header only) an image of an accepted format; ``InputError`` otherwise."""
    try:
        with warnings.catch_warnings():
            # Pillow warns between MAX_IMAGE_PIXELS and twice that; our own
            # limit is the one that decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        raise InputError(field, f"not a {_FORMAT_NAMES} image", code="not_an_image") from None
    except Image.DecompressionBombError as exc:
        raise InputError(
            field, f"decompression bomb refused: {exc}", code="input_too_large"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(field, f"corrupt image: {exc}", code="not_an_image") from None


def _check_size(width: int, height: int, field: str, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise InputError(
            field,
            f"image is {width}×{height}, over the limit of {max_pixels} pixels",
            code="input_too_large",
        )
    if min(width, height) < MIN_SIDE:
        # A sliver crashes detectors and scalers on every attempt alike.
        raise InputError(
            field,
            f"image is {width}×{height}; each side must be at least {MIN_SIDE} pixels",
            code="image_too_small",
        )


def probe_image(data: bytes, field: str, max_pixels: int) -> tuple[int, int]:
    """Width and height from the header, with format and size refusals; no pixels decoded."""
    image = _open(data, field)
    with image:
        _check_size(*image.size, field, max_pixels)
        return image.size


def draft_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """The size a JPEG decodes to when asked to cover ``max_side`` (scales 1, 1/2, 1/4, 1/8)."""
    width, height = size
    scale = 1
    while scale < 8 and max(width, height) // (scale * 2) >= max_side:
        scale *= 2
    return -(-width // scale), -(-height // scale)


def decode_image(
    data: bytes, field: str, max_pixels: int, *, max_side: int | None = None
) -> Image.Image:
    """Decode an accepted format, refuse decompression bombs, apply EXIF orientation.

    ``max_side`` lets JPEG decode at a reduced scale (``Image.draft``) that
    still covers it; other formats decode at full size. Blocking (Pillow
    decodes on the calling thread): run it in a thread.
    """
    image = _open(data, field)
    _check_size(*image.size, field, max_pixels)
    try:
        if max_side is not None and image.format == "JPEG":
            image.draft("RGB", draft_size(image.size, max_side))
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(field, f"corrupt image: {exc}", code="not_an_image") from None
    # In place: without it Pillow returns a full copy even when nothing turns.
    ImageOps.exif_transpose(image, in_place=True)
    return image
