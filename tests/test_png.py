"""The fast PNG writer: every pixel survives, in every mode it is given."""

from __future__ import annotations

import io
import random

import pytest
from PIL import Image

from shortdrama_worker.png import encode_png


def noisy(mode: str, size: tuple[int, int]) -> Image.Image:
    """Random pixels: every byte value, every filter difference, wrap-around included."""
    rng = random.Random(7)
    bands = len(Image.new(mode, (1, 1)).getbands())
    data = bytes(rng.randrange(256) for _ in range(size[0] * size[1] * bands))
    return Image.frombytes(mode, size, data)


def decoded(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    image.load()
    return image


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P"])
@pytest.mark.parametrize("size", [(1, 1), (1, 9), (9, 1), (37, 23), (5, 600)])
def test_every_pixel_round_trips(mode: str, size: tuple[int, int]) -> None:
    image = noisy(mode, size)
    back = decoded(encode_png(image))
    assert back.mode == image.mode
    assert back.size == image.size
    # Compared as RGBA: Pillow may renumber a palette image's colours on save.
    assert back.convert("RGBA").tobytes() == image.convert("RGBA").tobytes()
    if mode in ("RGB", "RGBA"):  # the fast path: byte for byte
        assert back.tobytes() == image.tobytes()


def test_a_photo_round_trips_and_is_compressed() -> None:
    from pathlib import Path

    photo = Image.open(Path(__file__).resolve().parents[1] / "examples" / "face.png")
    photo = photo.convert("RGB")
    png = encode_png(photo)
    assert decoded(png).tobytes() == photo.tobytes()
    # Deflate did its work: well under the raw 3 bytes per pixel.
    assert len(png) < 0.7 * photo.width * photo.height * 3


def test_a_colour_profile_and_a_colour_key_are_kept() -> None:
    from PIL import ImageCms

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    tagged = noisy("RGB", (16, 8))
    tagged.info["icc_profile"] = profile
    back = decoded(encode_png(tagged))
    assert back.info["icc_profile"] == profile
    assert back.tobytes() == tagged.tobytes()

    keyed = noisy("RGB", (16, 8))
    keyed.info["transparency"] = (1, 2, 3)
    back = decoded(encode_png(keyed))
    assert back.info["transparency"] == (1, 2, 3)
    assert back.tobytes() == keyed.tobytes()
