"""What a job may ask: both spellings, 1-6 clothing items, and nothing else."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from shortdrama_worker.contract import iter_references

from shortdrama_compose.model import MAX_CLOTHING, ComposeInput, ComposeSettings, output_size

URL = "https://cdn.example.com/{}.png"


def body(clothing: int = 2, **extra: Any) -> dict[str, Any]:
    return {
        "personImage": URL.format("person"),
        "clothingImages": [URL.format(f"item{i}") for i in range(clothing)],
        "placeImage": URL.format("place"),
        **extra,
    }


def test_the_seed_body_and_the_snake_case_one_mean_the_same() -> None:
    camel = ComposeInput.model_validate(body(), strict=True)
    snake = ComposeInput.model_validate(
        {
            "person_image": URL.format("person"),
            "clothing_images": [URL.format("item0"), URL.format("item1")],
            "place_image": URL.format("place"),
        },
        strict=True,
    )
    assert camel == snake
    # What the worker stores is snake_case and validates again when the job runs.
    assert ComposeInput.model_validate(camel.model_dump(mode="json")) == camel


def test_every_image_is_a_reference_the_worker_checks_and_stages() -> None:
    found = {r.field: r.value for r in iter_references(ComposeInput.model_validate(body()))}
    assert found == {
        "person_image": URL.format("person"),
        "clothing_images.0": URL.format("item0"),
        "clothing_images.1": URL.format("item1"),
        "place_image": URL.format("place"),
    }


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (body(clothing=0), "clothingImages"),
        (body(clothing=MAX_CLOTHING + 1), "clothingImages"),
        ({k: v for k, v in body().items() if k != "placeImage"}, "place_image"),
        (body(garment=URL.format("x")), "garment"),
        (body(width=1000), "width"),
    ],
    ids=["no-clothing", "too-many", "no-place", "unknown-field", "width-not-16"],
)
def test_bad_input_is_refused_naming_the_field(payload: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ComposeInput.model_validate(payload, strict=True)
    assert field in {str(part) for error in caught.value.errors() for part in error["loc"]}


def test_the_sagemaker_back_end_needs_its_section_and_an_endpoint() -> None:
    with pytest.raises(ValidationError, match=r"needs a .*sagemaker.* section"):
        ComposeSettings.model_validate({"backend": "sagemaker"})
    with pytest.raises(ValidationError, match="endpoint_name"):
        ComposeSettings.model_validate({"backend": "sagemaker", "sagemaker": {"bucket": "b-1"}})


@pytest.mark.parametrize(
    ("asked", "aspect", "size"),
    [
        ((None, None), 16 / 9, (1360, 768)),
        ((None, None), 3 / 4, (880, 1184)),
        ((512, None), 2.0, (512, 256)),
        ((None, 512), 0.5, (256, 512)),
        ((640, 480), 9.0, (640, 480)),
    ],
)
def test_output_size(
    asked: tuple[int | None, int | None], aspect: float, size: tuple[int, int]
) -> None:
    assert output_size(*asked, aspect) == size
