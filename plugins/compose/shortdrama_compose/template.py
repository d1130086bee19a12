"""The SageMaker endpoint's request body: a JSON template with ``$markers``.

A string value that is exactly ``$name`` is replaced by that value, of
whatever JSON type it has (``$clothing_images`` is a list, ``$seed`` a
number); a key whose value is unset (no prompt given) is left out. The
default is the body the seed's InstantID endpoint took::

    {"person_image": "$person_image", "clothing_images": "$clothing_images",
     "place_image": "$place_image"}

Images are presigned HTTPS URLs, ``s3://`` URIs or base64, as
``image_encoding`` says.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DEFAULT_TEMPLATE: dict[str, Any] = {
    "person_image": "$person_image",
    "clothing_images": "$clothing_images",
    "place_image": "$place_image",
}
MARKERS = {
    "person_image": "the person image",
    "clothing_images": "the clothing images, a list in the job's order",
    "clothing_collage": "the clothing items laid out in one image",
    "place_image": "the place image",
    "prompt": "the job's own prompt (left out when unset)",
    "instruction": "the composition instruction with the job's prompt appended",
    "seed": "the seed (the job's, or derived from the job id)",
    "width": "the requested output width (left out when unset)",
    "height": "the requested output height (left out when unset)",
    "job_id": "the job id",
}


class TemplateError(Exception):
    """The request template cannot be used; the message says why."""


def load_template(inline: Mapping[str, Any] | None, path: Path | None) -> dict[str, Any]:
    """The configured template, checked: known markers, and every image the endpoint needs."""
    if path is not None:
        try:
            template = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise TemplateError(f"request_template_file {path}: {exc}") from None
    else:
        template = dict(inline) if inline is not None else dict(DEFAULT_TEMPLATE)
    if not isinstance(template, dict):
        raise TemplateError("the request template must be a JSON object")
    used = markers_in(template)
    unknown = sorted(used - set(MARKERS))
    if unknown:
        known = ", ".join("$" + m for m in MARKERS)
        raise TemplateError(
            f"unknown marker {', '.join('$' + u for u in unknown)} (known: {known})"
        )
    missing = [m for m in ("person_image", "place_image") if m not in used]
    if not used & {"clothing_images", "clothing_collage"}:
        missing.append("clothing_images or $clothing_collage")
    if missing:
        raise TemplateError(f"the request template lacks ${', $'.join(missing)}")
    return template


def markers_in(value: Any) -> set[str]:
    if isinstance(value, str):
        return {value[1:]} if _is_marker(value) else set()
    if isinstance(value, Mapping):
        return set().union(*(markers_in(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(markers_in(v) for v in value))
    return set()


def render(template: Any, values: Mapping[str, Any]) -> Any:
    """The template with each ``$marker`` replaced; keys whose value is ``None`` dropped."""
    if isinstance(template, str) and _is_marker(template):
        return values.get(template[1:])
    if isinstance(template, Mapping):
        rendered = {key: render(value, values) for key, value in template.items()}
        return {key: value for key, value in rendered.items() if value is not None}
    if isinstance(template, list):
        return [render(item, values) for item in template]
    return template


def _is_marker(text: str) -> bool:
    return len(text) > 1 and text[0] == "$" and text[1:].replace("_", "a").isalnum()
