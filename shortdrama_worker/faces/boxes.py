"""Face boxes, their ordering, and the detector interface every backend implements."""

from __future__ import annotations

from typing import Protocol

from PIL import Image

from shortdrama_worker.contract.values import FaceBox


class FaceDetector(Protocol):
    """A backend that finds faces. ``name`` is recorded in the job result."""

    name: str

    async def detect(self, image: Image.Image) -> list[FaceBox]:
        """Faces in ``image``, ordered by ``order_faces``; empty if none."""
        ...
