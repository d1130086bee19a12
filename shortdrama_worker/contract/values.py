"""Value types that cross the contract: what a handler fetches and what it stores."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Resource = Literal["gpu", "cpu"]
"""Which consumer runs a kind: ``gpu`` jobs share the GPU queue and slots."""

Health = Literal["healthy", "degraded"]
"""A dependency's health as shown on ``/health``."""


@dataclass(frozen=True)
class FetchedInput:
    """Raw bytes of an input with what the fetcher learned about them.

    ``content_type`` is what the bytes are (sniffed by the host where it knows
    the format), not only what the sender claimed.
    """

    data: bytes
    content_type: str | None
    source: str


@dataclass(frozen=True)
class StoredResult:
    """A file the host wrote to the results bucket for this job.

    It holds the object key, not a URL: URLs expire, keys do not. Put the
    ``StoredResult`` itself anywhere in the result dict where a client should
    see a link; the host stores the key and renders a fresh URL (presigned or
    CDN) each time the job is read or delivered to a webhook.
    """

    key: str
    content_type: str
    size: int


@dataclass(frozen=True)
class FaceBox:
    """A face in pixel coordinates of the image it was found in.

    Faces come ordered left to right by the box centre (ties top to bottom):
    the documented ``face_index`` order every detector follows.
    """

    x: int
    y: int
    width: int
    height: int
    confidence: float

    @property
    def center_x(self) -> float:
        return self.x + self.width / 2

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
