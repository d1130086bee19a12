"""Field types shared by handler input models."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field

from shortdrama_worker.inputs import check_ref


def _valid_ref(value: str) -> str:
    # http:// is refused or allowed by the fetcher's setting at run time; the
    # edge accepts it so that setting stays the one place that decides.
    problem = check_ref(value, allow_http=True)
    if problem:
        raise ValueError(problem)
    return value


ImageRef = Annotated[
    str,
    Field(
        min_length=8,
        max_length=40 * 1024 * 1024,
        json_schema_extra={"format": "uri-reference"},
        examples=["https://cdn.example.com/frame.png", "s3://bucket/frame.png"],
    ),
    AfterValidator(_valid_ref),
]
"""An input image: ``https://…``, ``s3://bucket/key`` or ``data:image/…;base64,…``."""
