"""Request bodies for submit: JSON, or ``multipart/form-data`` with image files.

A file part becomes a ``data:`` URI of its sniffed type, so uploads pass the
same limits, checks and staging to S3 as inline values do (``submission``
reads image headers: a non-image or an over-limit image named ``.png`` is
refused at submit, naming its field).
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

from aiohttp import BodyPartReader, MultipartReader, StreamReader, web

from shortdrama_worker import keys
from shortdrama_worker.contract import IMAGE_TYPES, sniff_content_type
from shortdrama_worker.plugins import HandlerSpec
from shortdrama_worker.web.responses import error_response

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


async def read_body(request: web.Request, spec: HandlerSpec) -> dict[str, Any]:
    """The submitted JSON object, from a JSON body or a multipart form."""
    if request.content_type == "multipart/form-data":
        return await _form(request, spec.cls.input_model.model_json_schema())
    raw = await request.read()
    try:
        body = json.loads(raw or b"null")
    except RecursionError:
        raise BodyError(400, "malformed_json", "request body is nested too deeply") from None
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
    reader = await _multipart(request)
    while (part := await _next_part(reader)) is not None:
        if not isinstance(part, BodyPartReader) or not part.name:
            raise BodyError(400, "malformed_form", "every form part needs a name")
        name = part.name
        is_file = bool(part.filename) and name != "json"
        limit = settings.inputs.max_bytes if is_file else body_limit
        data = await _read_part(part, name, limit, body_limit - total, body_limit)
        total += len(data)
        if is_file:
            fields[name] = _data_uri(data, name, schema)
        elif name == "json":
            try:
                parsed = json.loads(data)
            except RecursionError:
                raise BodyError(400, "malformed_json", "json part: nested too deeply") from None
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


async def _multipart(request: web.Request) -> MultipartReader:
    """A reader over the body, which the deadline middleware has already read in full."""
    body = await request.read()
    stream = StreamReader(request.protocol, len(body) + 1, loop=asyncio.get_running_loop())
    stream.feed_data(body)
    stream.feed_eof()
    try:
        return MultipartReader(request.headers, stream)
    except ValueError as exc:  # no boundary in Content-Type
        raise BodyError(400, "malformed_form", f"not a readable multipart form: {exc}") from None


async def _next_part(reader: MultipartReader) -> Any:
    try:
        return await reader.next()
    except (ValueError, AssertionError, KeyError) as exc:
        # aiohttp's parser reports a missing or wrong boundary this way.
        raise BodyError(400, "malformed_form", f"not a readable multipart form: {exc}") from None


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


def _data_uri(data: bytes, name: str, schema: dict[str, Any]) -> str:
    """A file part as a ``data:`` URI of its sniffed type (checked in full at submit)."""
    reference = schema.get("properties", {}).get(name, {}).get("x-reference", {})
    mime = sniff_content_type(data)
    if reference.get("kind", "image") == "image" and mime not in IMAGE_TYPES:
        raise BodyError(422, "not_an_image", f"{name}: not a PNG, JPEG or WebP image", name)
    return f"data:{mime or 'application/octet-stream'};base64,{base64.b64encode(data).decode()}"


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
