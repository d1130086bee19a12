"""The clothing collage: every item whole, apart, and at its own proportions."""

from __future__ import annotations

import pytest
from PIL import Image, ImageChops, ImageDraw

from shortdrama_compose.collage import collage, grid


def garment(index: int, size: tuple[int, int]) -> Image.Image:
    """A distinct item: its own colour with a stripe, so a crop of it is recognisable."""
    image = Image.new("RGB", size, ((index * 53) % 256, (index * 97 + 60) % 256, 200 - index * 30))
    ImageDraw.Draw(image).rectangle((0, 0, size[0] // 3, size[1] - 1), fill=(20, 20, 20))
    return image


@pytest.mark.parametrize("count", [2, 3, 4, 5, 6])
def test_each_item_can_be_found_whole_in_its_cell(count: int) -> None:
    sizes = [(300, 400), (500, 250), (200, 600), (400, 400), (640, 360), (250, 300)]
    items = [garment(i, sizes[i]) for i in range(count)]
    sheet, cells = collage(items, cell=256)
    columns, rows = grid(count)
    assert sheet.size == (columns * 256, rows * 256)
    for item, cell in zip(items, cells, strict=True):
        # Proportions kept (to a pixel of rounding), nothing cropped.
        assert abs(cell.width / cell.height - item.width / item.height) < 0.03
        placed = sheet.crop((cell.x, cell.y, cell.x + cell.width, cell.y + cell.height))
        expected = item.resize((cell.width, cell.height), Image.Resampling.LANCZOS)
        difference = ImageChops.difference(placed, expected).convert("L")
        assert difference.getextrema()[1] < 40
    # Items do not touch: every pair of cells is apart.
    for a in cells:
        for b in cells:
            if a is not b:
                apart_x = a.x + a.width < b.x or b.x + b.width < a.x
                apart_y = a.y + a.height < b.y or b.y + b.height < a.y
                assert apart_x or apart_y


def test_a_transparent_cutout_is_laid_on_white() -> None:
    cutout = Image.new("RGBA", (100, 100), (0, 0, 0, 0))
    ImageDraw.Draw(cutout).ellipse((20, 20, 80, 80), fill=(200, 0, 0, 255))
    sheet, cells = collage([cutout, garment(1, (100, 100))], cell=128)
    assert sheet.mode == "RGB"
    assert sheet.getpixel((cells[0].x + 2, cells[0].y + 2)) == (255, 255, 255)
    assert sheet.getpixel(
        (cells[0].x + cells[0].width // 2, cells[0].y + cells[0].height // 2)
    ) == (
        200,
        0,
        0,
    )


def test_a_single_item_is_sent_alone() -> None:
    item = garment(0, (300, 500))
    sheet, (cell,) = collage([item], cell=512)
    assert sheet.size == (300, 500) and (cell.width, cell.height) == (300, 500)
