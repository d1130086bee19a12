"""Value types that cross the contract: what a handler fetches and what it stores."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
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
    manifest_id: str | None = None
    """The identifier of the C2PA manifest the host signed into the file, if it did."""


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


ProvenanceActionName = Literal["c2pa.created", "c2pa.edited"]
"""The C2PA action that made a result: a new image, or an edit of an input image."""

DigitalSourceType = Literal[
    "trainedAlgorithmicMedia",
    "compositeWithTrainedAlgorithmicMedia",
    "algorithmicMedia",
    "algorithmicallyEnhanced",
]
"""IPTC digital source types (http://cv.iptc.org/newscodes/digitalsourcetype/) a
handler may claim: ``trainedAlgorithmicMedia`` when a model drew the whole
image, ``compositeWithTrainedAlgorithmicMedia`` when model-drawn pixels were
combined with an input's, ``algorithmicMedia`` for pixels an algorithm made
without a trained model, ``algorithmicallyEnhanced`` for algorithmic touch-ups."""


@dataclass(frozen=True)
class Consent:
    """Who attests that the person shown in an input agreed to this use of it."""

    release_form: str
    """A reference the studio's release-form system resolves to the signed release."""
    attested_by: str
    """The person or role that attests the release covers this use."""


@dataclass(frozen=True)
class Provenance:
    """How a handler's result images were made, for their Content Credentials.

    Declare it on the handler class (``Handler.provenance``) or pass it to
    ``store_result`` for one file. The host turns it into the C2PA actions of
    the signed manifest; the inputs the job fetched become its ingredients.
    ``c2pa.edited`` needs an input image to edit: ``parent`` names the input
    field that is edited (default: the first image the job fetched); with no
    input fetched the action is recorded as ``c2pa.created``. ``source_type``
    is required where a model generated pixels.
    """

    action: ProvenanceActionName = "c2pa.edited"
    source_type: DigitalSourceType | None = None
    model: str | None = None
    provider: str | None = None
    parent: str | None = None
    description: str | None = None
    consent: Mapping[str, Consent] = field(default_factory=dict)
    """Consent attestations, by the input field that shows the person."""
    details: Mapping[str, str | int | float | bool] = field(default_factory=dict)
    """Further facts worth signing (a provider watermark, a workflow name)."""


def order_faces(faces: list[FaceBox]) -> list[FaceBox]:
    """The documented ``face_index`` order: left to right by the box centre.

    Editors pick "the second person from the left"; ties (stacked faces) go
    top to bottom. Every backend returns faces in this order.
    """
    return sorted(faces, key=lambda f: (round(f.center_x), f.y))
