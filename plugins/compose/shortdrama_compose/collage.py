"""Several clothing items laid out in one reference image.

Qwen-Image-Edit-2509 takes three reference images, so the clothing shares
one. Each item gets a cell of its own in a grid on a white sheet, scaled to
fit without cropping or distortion, with a white gap around it: the model
(and a person checking the input) sees every item whole and apart from the
others, as on a product page. Transparent cut-outs are laid on white.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

BACKGROUND = (255, 255, 255)


@dataclass(frozen=True)
class Cell:
    """Where one item landed in the collage, in collage pixels."""

    x: int
    y: int
    width: int
    height: int


def grid(count: int) -> tuple[int, int]:
    """Columns and rows for ``count`` items: as square as possible, wider than tall."""
    columns = math.ceil(math.sqrt(count))
    return columns, math.ceil(count / columns)


def collage(items: Sequence[Image.Image], *, cell: int = 512) -> tuple[Image.Image, list[Cell]]:
    """One RGB image holding every item, and where each one is.

    A single item is returned alone (on white), at its own aspect ratio, so
    nothing shrinks it needlessly.
    """
    if not items:
        raise ValueError("a collage needs at least one item")
    if len(items) == 1:
        item = _flatten(items[0])
        scale = min(1.0, (2 * cell) / max(item.size))
        size = (max(1, round(item.width * scale)), max(1, round(item.height * scale)))
        placed = item.resize(size, Image.Resampling.LANCZOS) if scale < 1 else item
        return placed, [Cell(0, 0, placed.width, placed.height)]
    columns, rows = grid(len(items))
    gap = max(8, cell // 32)
    sheet = Image.new("RGB", (columns * cell, rows * cell), BACKGROUND)
    cells = []
    # A short last row is centred, so no item sits alone in a corner.
    last_row = len(items) - (rows - 1) * columns
    for index, raw in enumerate(items):
        row, column = divmod(index, columns)
        offset = (columns - last_row) * cell // 2 if row == rows - 1 else 0
        item = _flatten(raw)
        box = cell - 2 * gap
        scale = min(box / item.width, box / item.height)
        size = (max(1, round(item.width * scale)), max(1, round(item.height * scale)))
        fitted = item.resize(size, Image.Resampling.LANCZOS)
        x = offset + column * cell + (cell - size[0]) // 2
        y = row * cell + (cell - size[1]) // 2
        sheet.paste(fitted, (x, y))
        cells.append(Cell(x, y, size[0], size[1]))
    return sheet, cells


def _flatten(image: Image.Image) -> Image.Image:
    """RGB, with any transparency laid on white."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, BACKGROUND)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB") if image.mode != "RGB" else image
