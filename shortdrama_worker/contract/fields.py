"""Field types for handler input models.

A reference field (``ImageRef``, or a type made with ``file_ref``) carries a
``Reference`` marker. The contract only declares; the host enforces: at submit
it checks every reference against its input policy (schemes, hosts, buckets)
and stages inline ``data:`` values, and at run time ``JobContext.fetch_image``
/ ``fetch_file`` fetch through the address guard. Only fields typed as
references are treated as references — a prompt that happens to start with
``data:`` is text.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo

from shortdrama_worker.contract.values import Consent

IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp")
"""Image formats the host decodes; anything else is refused as an input."""


@dataclass(frozen=True)
class Reference:
    """Marks a ``str`` field as a reference to an input object.

    ``accept`` lists the content types the handler can use; ``max_bytes``
    bounds the fetched size (``None``: the host's ``inputs.max_bytes``).
    """

    kind: Literal["image", "file"]
    accept: tuple[str, ...]
    max_bytes: int | None = None


_MAX_REF_CHARS = 40 * 1024 * 1024  # a data: URI inline in JSON; the body limit bites first

REFERENCE_CHECK = "shortdrama_worker.reference_check"
"""Validation-context key under which the host passes its reference policy:
a callable ``(value, Reference) -> problem | None``. The policy lives in the
host, so the contract never decides which schemes, hosts or buckets are safe;
validated without it (in a plugin's own tests), a reference is just a string."""

ReferenceCheck = Callable[[str, Reference], str | None]


def _checker(reference: Reference) -> Callable[[str, ValidationInfo], str]:
    def check(value: str, info: ValidationInfo) -> str:
        policy = (info.context or {}).get(REFERENCE_CHECK)
        problem = policy(value, reference) if policy is not None else None
        if problem:
            raise ValueError(problem)
        return value

    return check


def _ref_field(description: str, reference: Reference) -> Any:
    return Annotated[
        str,
        Field(
            min_length=1,
            max_length=_MAX_REF_CHARS,
            description=description,
            json_schema_extra={
                "format": "uri-reference",
                "x-reference": {"kind": reference.kind, "accept": list(reference.accept)},
            },
            examples=["https://cdn.example.com/frame.png", "s3://bucket/frame.png"],
        ),
        reference,
        AfterValidator(_checker(reference)),
    ]


ImageRef = _ref_field(
    "An image: https:// URL, s3://bucket/key or data:image/…;base64,… URI.",
    Reference("image", IMAGE_TYPES),
)
"""An input image: ``https://…``, ``s3://bucket/key`` or ``data:image/…;base64,…``."""


def file_ref(*, accept: Sequence[str], max_bytes: int | None = None, description: str = "") -> Any:
    """A reference to a non-image file (audio, say) of the given content types.

    Use it as a type: ``AudioRef = file_ref(accept=["audio/wav", "audio/mpeg"])``.
    The host sniffs the fetched bytes and refuses a type outside ``accept``.
    """
    text = (
        description or f"A file ({', '.join(accept)}): https:// URL, s3://bucket/key or data: URI."
    )
    return _ref_field(text, Reference("file", tuple(accept), max_bytes))


@dataclass(frozen=True)
class FoundReference:
    """One reference value inside a validated input model."""

    path: tuple[str | int, ...]
    value: str
    reference: Reference

    @property
    def field(self) -> str:
        """The field's name as error messages spell it (``clothing.1``)."""
        return ".".join(str(p) for p in self.path)


def iter_references(model: BaseModel) -> Iterator[FoundReference]:
    """Every reference value in ``model``, nested models and lists included."""
    yield from _walk(model, ())


def _walk(model: BaseModel, prefix: tuple[str | int, ...]) -> Iterator[FoundReference]:
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        if value is None:
            continue
        path = (*prefix, name)
        marker = _marker(info.metadata) or _marker_in(info.annotation)
        yield from _values(value, path, marker)


def _values(
    value: Any, path: tuple[str | int, ...], marker: Reference | None
) -> Iterator[FoundReference]:
    if isinstance(value, BaseModel):
        yield from _walk(value, path)
    elif isinstance(value, str):
        if marker is not None:
            yield FoundReference(path, value, marker)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _values(item, (*path, index), marker)


def _marker(metadata: Sequence[Any]) -> Reference | None:
    return next((m for m in metadata if isinstance(m, Reference)), None)


def _marker_in(annotation: Any) -> Reference | None:
    """The marker inside ``list[ImageRef]``, ``ImageRef | None`` and the like."""
    if annotation is None:
        return None
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Annotated:
        return _marker(args[1:]) or _marker_in(args[0])
    if origin in (list, tuple, Union, types.UnionType) or (
        origin is not None and isinstance(origin, type) and issubclass(origin, Sequence)
    ):
        return next((m for a in args if (m := _marker_in(a)) is not None), None)
    return None


class ConsentAttestation(BaseModel):
    """An attestation that the person whose face an input shows agreed to this use.

    The worker cannot check a release form; it records who vouches for which
    one, on the job and in the signed Content Credentials of the result.
    """

    model_config = ConfigDict(extra="forbid")

    release_form: str = Field(
        min_length=1,
        max_length=500,
        description="A reference the studio's release-form system resolves to the "
        "signed release of the person whose face this is (an id or a URI).",
        examples=["RF-2026-00412"],
    )
    attested_by: str = Field(
        min_length=1,
        max_length=200,
        description="Who attests that the release covers this use (a name or staff id).",
        examples=["casting: j.doe"],
    )

    def as_consent(self) -> Consent:
        """The attestation as a ``Provenance`` consent entry."""
        return Consent(release_form=self.release_form, attested_by=self.attested_by)
