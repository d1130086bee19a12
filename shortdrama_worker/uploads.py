"""Request bodies for submit: JSON, or ``multipart/form-data`` with image files.

A file part becomes a ``data:`` URI of its sniffed type, so uploads pass the
same limits, checks and staging to S3 as inline images do. Image headers are
read here (format and size, no pixels decoded) so that a non-image or an
over-limit image named ``.png`` is refused at submit, naming its field.
"""

from __future__ import annotations

import base64
import io
import json
import warnings
from typing import Any

from aiohttp import BodyPartReader, web
from PIL import Image, UnidentifiedImageError

from shortdrama_worker import keys
from shortdrama_worker.responses import error_response

_READ_CHUNK = 256 * 1024


class BodyError(Exception):
    """The body cannot be read as a job; ``response()`` says why to the client."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.field = field

    def response(self) -> web.Response:
        extra: dict[str, Any] = {}
        if self.field is not None:
            extra["fields"] = [{"field": self.field, "message": str(self), "type": self.code}]
        return error_response(self.status, self.code, str(self), **extra)


def sniff_image(data: bytes, field: str, max_pixels: int) -> str:
    """The image's real media type from its header; ``BodyError`` (422) if it is not one we take."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                fmt, (width, height) = image.format, image.size
    except (UnidentifiedImageError, Image.DecompressionBombError):
        raise BodyError(
            422, "not_an_image", f"{field}: not an image (PNG, JPEG, WebP, GIF, BMP, TIFF…)", field
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BodyError(
            422, "not_an_image", f"{field}: corrupt image header: {exc}", field
        ) from None
    if width * height > max_pixels:
        raise BodyError(
            422,
            "input_too_large",
            f"{field}: image is {width}×{height} = {width * height} pixels, over the limit of "
            f"{max_pixels} (inputs.max_pixels)",
            field,
        )
    mime = Image.MIME.get(fmt or "", "")
    if not mime.startswith("image/"):
        raise BodyError(
            422, "not_an_image", f"{field}: {fmt} is not an image format we take", field
        )
    return mime


async def read_body(request: web.Request, schema: dict[str, Any]) -> dict[str, Any]:
    """The submitted JSON object, from a JSON body or a multipart form."""
    if request.content_type == "multipart/form-data":
        return await _form(request, schema)
    raw = await request.read()
    try:
        body = json.loads(raw or b"null")
    except ValueError as exc:
        raise BodyError(400, "malformed_json", f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BodyError(400, "malformed_json", "request body must be a JSON object")
    return body


async def _form(request: web.Request, schema: dict[str, Any]) -> dict[str, Any]:
    settings = request.app[keys.SETTINGS]
    body_limit = settings.api.max_body_bytes
    body: dict[str, Any] = {}
    fields: dict[str, Any] = {}
    total = 0
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader) or not part.name:
            raise BodyError(400, "malformed_form", "every form part needs a name")
        name = part.name
        is_file = bool(part.filename) and name != "json"
        limit = settings.inputs.max_bytes if is_file else body_limit
        data = await _read_part(part, name, limit, body_limit - total, body_limit)
        total += len(data)
        if is_file:
            mime = sniff_image(data, name, settings.inputs.max_pixels)
            fields[name] = f"data:{mime};base64,{base64.b64encode(data).decode()}"
        elif name == "json":
            try:
                parsed = json.loads(data)
            except ValueError as exc:
                raise BodyError(
                    400, "malformed_json", f"json part: not valid JSON: {exc}"
                ) from None
            if not isinstance(parsed, dict):
                raise BodyError(400, "malformed_json", "json part: must be a JSON object")
            body.update(parsed)
        else:
            fields[name] = _form_value(data.decode(part.get_charset("utf-8")), name, schema)
    # Parts named after fields win over the same fields inside the json part.
    return {**body, **fields}


async def _read_part(
    part: BodyPartReader, name: str, limit: int, room: int, body_limit: int
) -> bytes:
    chunks = bytearray()
    while chunk := await part.read_chunk(_READ_CHUNK):
        chunks += chunk
        if len(chunks) > room:
            raise BodyError(
                413,
                "body_too_large",
                f"request body larger than {body_limit} bytes (api.max_body_bytes)",
            )
        if len(chunks) > limit:
            raise BodyError(
                422,
                "input_too_large",
                f"{name}: file larger than {limit} bytes (inputs.max_bytes)",
                name,
            )
    return bytes(chunks)


def _form_value(text: str, name: str, schema: dict[str, Any]) -> Any:
    """A form field is text; read it as JSON (0, true, [..]) unless the schema wants a string."""
    prop = schema.get("properties", {}).get(name, {})
    types = {prop.get("type")} | {alt.get("type") for alt in prop.get("anyOf", [])}
    if "string" in types and not types & {"integer", "number", "boolean", "array", "object"}:
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text
