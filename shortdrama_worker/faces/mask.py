"""Drawing the face mask: a black ellipse over the face, nothing else."""

from __future__ import annotations

from PIL import Image, ImageDraw

from shortdrama_worker.contract import FaceBox

# MTCNN-style boxes run from the eyebrows to the chin and are a little wider
# than the cheeks; an ellipse inscribed in a slightly narrowed box covers the
# face without reaching into the hair or ears.
_WIDTH_SCALE = 0.92
_HEIGHT_SCALE = 1.0


def mask_ellipse(box: FaceBox, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The ellipse's bounding box for ``box``, clipped to an image of ``size``."""
    cx = box.x + box.width / 2
    cy = box.y + box.height / 2
    half_w = box.width * _WIDTH_SCALE / 2
    half_h = box.height * _HEIGHT_SCALE / 2
    width, height = size
    return (
        max(0, round(cx - half_w)),
        max(0, round(cy - half_h)),
        min(width - 1, round(cx + half_w)),
        min(height - 1, round(cy + half_h)),
    )


def draw_face_mask(image: Image.Image, box: FaceBox) -> Image.Image:
    """A copy of ``image`` (same size and mode family) with the face blacked out."""
    out = image.convert("RGBA" if image.mode in ("RGBA", "LA", "P") else "RGB")
    draw = ImageDraw.Draw(out)
    fill = (0, 0, 0, 255) if out.mode == "RGBA" else (0, 0, 0)
    draw.ellipse(mask_ellipse(box, out.size), fill=fill)
    return out
