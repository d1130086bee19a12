"""Face boxes, their ordering, and the detector interface every backend implements."""

from __future__ import annotations

from typing import Protocol

from PIL import Image

from shortdrama_worker.contract.values import FaceBox

__all__ = ["FaceBox", "FaceDetector", "order_faces"]


def order_faces(faces: list[FaceBox]) -> list[FaceBox]:
    """The documented ``face_index`` order: left to right by the box centre.

    Editors pick "the second person from the left"; ties (stacked faces) go
    top to bottom. Every backend returns faces in this order.
    """
    return sorted(faces, key=lambda f: (round(f.center_x), f.y))


class FaceDetector(Protocol):
    """A backend that finds faces. ``name`` is recorded in the job result."""

    name: str

    async def detect(self, image: Image.Image) -> list[FaceBox]:
        """Faces in ``image``, ordered by ``order_faces``; empty if none."""
        ...
