"""Fetching and decoding input images: ``https://``, ``s3://`` and ``data:`` URIs.

Every failure names the field. A fetch that may work later (connection
refused, 5xx, timeout) is transient; anything the editor must fix (404, not
an image, too large) is permanent.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import re
import warnings
from typing import Any, Literal
from urllib.parse import unquote_to_bytes, urlsplit

import aiohttp
import yarl
from botocore.exceptions import BotoCoreError, ClientError
from PIL import Image, ImageOps, UnidentifiedImageError

from shortdrama_worker.aws import error_code
from shortdrama_worker.contract import FetchedInput, Reference
from shortdrama_worker.contract.errors import InputError, InputUnavailableError
from shortdrama_worker.netguard import AddressPolicy, literal_refusal, refusal_of
from shortdrama_worker.settings import InputSettings

RefKind = Literal["image", "file"]

_DATA_URI = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]+)*),(?P<data>.*)$", re.S
)
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


def check_ref(ref: str, *, allow_http: bool, kind: RefKind = "image") -> str | None:
    """Why ``ref`` cannot be an input reference, or ``None`` if its form is acceptable."""
    if ref.startswith("data:"):
        if kind == "file" or ref.startswith("data:image/"):
            return None
        return "data: URI must be an image/* type"
    parts = urlsplit(ref)
    if parts.scheme == "https" or (parts.scheme == "http" and allow_http):
        return None if parts.hostname else "URL has no host"
    if parts.scheme == "s3":
        return None if parts.netloc and parts.path.strip("/") else "s3:// URI needs bucket and key"
    allowed = "https://, s3:// or data:image/" + (", http://" if allow_http else "")
    return f"unsupported scheme {parts.scheme or '(none)'!r}; use {allowed}"


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
        settings: InputSettings,
        *,
        policy: AddressPolicy,
        results_bucket: str,
    ) -> None:
        # ``http`` must be a session whose resolver applies ``policy``
        # (``netguard.GuardedResolver``); IP literals are checked here.
        self._http = http
        self._s3 = s3
        self.settings = settings
        self.policy = policy
        self.buckets = {results_bucket, *settings.s3_buckets}

    async def fetch(self, ref: str, *, field: str, kind: RefKind = "image") -> FetchedInput:
        problem = check_ref(ref, allow_http=self.settings.allow_http, kind=kind)
        if problem:
            raise InputError(field, problem)
        if ref.startswith("data:"):
            return parse_data_uri(ref, field, self.settings.max_bytes, kind=kind)
        if ref.startswith("s3://"):
            return await self._fetch_s3(ref, field)
        return await self._fetch_http(ref, field)

    async def fetch_image(self, ref: str, *, field: str) -> Image.Image:
        return (await self.fetch_decoded(ref, field=field))[1]

    async def fetch_decoded(self, ref: str, *, field: str) -> tuple[FetchedInput, Image.Image]:
        """The image's bytes as fetched (for provenance) and the image decoded."""
        fetched = await self.fetch(ref, field=field)
        image = await asyncio.to_thread(decode_image, fetched.data, field, self.settings.max_pixels)
        return fetched, image

    def _check_hop(self, url: str, field: str) -> None:
        problem = check_ref(url, allow_http=self.settings.allow_http)
        if problem or url.startswith(("data:", "s3:")):
            raise InputError(field, f"{url}: {problem or 'redirect to a non-HTTP URL'}")
        reason = literal_refusal(url, self.policy)
        if reason:
            raise InputError(field, f"{url} refused: {reason}", code="address_refused")

    async def _fetch_http(self, url: str, field: str) -> FetchedInput:
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout_s)
        start = url
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                for _ in range(self.settings.max_redirects + 1):
                    self._check_hop(url, field)
                    async with self._http.get(url, timeout=timeout, allow_redirects=False) as resp:
                        location = resp.headers.get("Location")
                        if resp.status in (301, 302, 303, 307, 308) and location:
                            url = str(resp.url.join(yarl.URL(location)))
                            continue
                        return await self._read(resp, url, field)
                raise InputError(
                    field, f"{start} redirects more than {self.settings.max_redirects} times"
                )
        except TimeoutError:
            raise InputUnavailableError(
                field, f"{url} did not answer within {self.settings.timeout_s:g} s"
            ) from None
        except aiohttp.ClientError as exc:
            refused = refusal_of(exc)
            if refused is not None:
                raise InputError(
                    field, f"{url} refused: {refused.reason}", code="address_refused"
                ) from None
            raise InputUnavailableError(field, f"{url} unreachable: {exc}") from None

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
        parts = urlsplit(ref)
        bucket, key = parts.netloc, parts.path.lstrip("/")
        if bucket not in self.buckets:
            raise InputError(field, f"bucket {bucket!r} is not one inputs may be read from")
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


def decode_image(data: bytes, field: str, max_pixels: int) -> Image.Image:
    """Decode, refuse decompression bombs, and apply EXIF orientation.

    Blocking (Pillow decodes on the calling thread): run it in a thread.
    """
    try:
        with warnings.catch_warnings():
            # Pillow warns between MAX_IMAGE_PIXELS and twice that; our own
            # limit below is the one that decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size  # from the header, before decoding pixels
            if width * height > max_pixels:
                raise InputError(
                    field,
                    f"image is {width}×{height}, over the limit of {max_pixels} pixels",
                    code="input_too_large",
                )
            image.load()
    except UnidentifiedImageError:
        raise InputError(field, "not an image Pillow can read", code="not_an_image") from None
    except Image.DecompressionBombError as exc:
        raise InputError(
            field, f"decompression bomb refused: {exc}", code="input_too_large"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(field, f"corrupt image: {exc}", code="not_an_image") from None
    transposed = ImageOps.exif_transpose(image)
    return transposed if transposed is not None else image
