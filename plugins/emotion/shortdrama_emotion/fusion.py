"""Late fusion of per-source readings into one emotion state.

Each reading (a module's ``valence``, ``arousal`` and ``confidence``) is
weighted per dimension by ``reliability[source][dimension] × confidence``:
text is trusted more on valence, voice more on arousal. Per dimension the
fused value is the weighted mean, ``disagreement`` the weighted standard
deviation of the readings around it (0 when they agree, up to 1 for readings
at opposite ends), and the dimension's confidence the weighted mean of the
readings' confidences times ``1 - disagreement``. One reading therefore passes
through unchanged, and readings that contradict each other lower the
confidence of what they fuse to.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shortdrama_emotion.circumplex import nearest_label

Source = Literal["face", "voice", "text"]
Dimension = Literal["valence", "arousal"]
DIMENSIONS: tuple[Dimension, ...] = ("valence", "arousal")

METHOD = (
    "late fusion: per-dimension weighted mean, weight = source reliability × confidence; "
    "disagreement = weighted standard deviation; label = nearest point of the circumplex"
)


class ModuleReading(BaseModel):
    """One module's reading, as the original ``getEmotionState`` took it."""

    model_config = ConfigDict(extra="forbid")

    source: Source = Field(description="Which module produced the reading.")
    # Optional, so a module that does not measure a dimension may leave it out
    # or send null (the host also drops nulls when it stores a job's input).
    valence: float | None = Field(
        default=None,
        ge=-1,
        le=1,
        description="Unpleasant (-1) to pleasant (1); null: not measured.",
    )
    arousal: float | None = Field(
        default=None, ge=-1, le=1, description="Calm (-1) to activated (1); null: not measured."
    )
    confidence: float = Field(ge=0, le=1, description="The module's confidence, 0–1.")

    @model_validator(mode="after")
    def _measures_something(self) -> ModuleReading:
        if self.valence is None and self.arousal is None:
            raise ValueError("a reading needs valence, arousal or both")
        return self


class DimensionReliability(BaseModel):
    """How far a source is trusted on each dimension (0: ignored)."""

    model_config = ConfigDict(extra="forbid")

    valence: float = Field(ge=0, le=1)
    arousal: float = Field(ge=0, le=1)


class Reliability(BaseModel):
    """Per-source, per-dimension reliability. The defaults follow the usual
    finding that text carries valence best, voice arousal best, and faces both
    moderately."""

    model_config = ConfigDict(extra="forbid")

    face: DimensionReliability = DimensionReliability(valence=0.7, arousal=0.5)
    voice: DimensionReliability = DimensionReliability(valence=0.2, arousal=0.8)
    text: DimensionReliability = DimensionReliability(valence=0.9, arousal=0.2)

    def of(self, source: Source, dimension: Dimension) -> float:
        value: float = getattr(getattr(self, source), dimension)
        return value


class FusionSettings(BaseModel):
    """``[handlers.options.emotion_state]`` (and ``emotion_analysis``)."""

    model_config = ConfigDict(extra="forbid")

    reliability: Reliability = Reliability()


def fuse(readings: Sequence[ModuleReading], reliability: Reliability) -> dict[str, Any]:
    """The fused state of ``readings`` (at least one)."""
    dimensions = {d: _fuse_dimension(readings, reliability, d) for d in DIMENSIONS}
    valence = dimensions["valence"]["value"]
    arousal = dimensions["arousal"]["value"]
    known = [dimensions[d] for d in DIMENSIONS if dimensions[d]["value"] is not None]
    return {
        "valence": valence,
        "arousal": arousal,
        "confidence": round(sum(d["confidence"] for d in known) / len(known), 4) if known else 0.0,
        # A label needs both coordinates; a state with one unknown has none.
        "label": nearest_label(valence, arousal)
        if valence is not None and arousal is not None
        else None,
        "disagreement": max((d["disagreement"] for d in known), default=0.0),
        "weights": [
            {
                "source": r.source,
                **{d: dimensions[d]["weights"][i] for d in DIMENSIONS},
            }
            for i, r in enumerate(readings)
        ],
        "dimensions": {
            d: {k: v for k, v in dimensions[d].items() if k != "weights"} for d in DIMENSIONS
        },
        "method": METHOD,
    }


def _fuse_dimension(
    readings: Sequence[ModuleReading], reliability: Reliability, dimension: Dimension
) -> dict[str, Any]:
    values = [getattr(r, dimension) for r in readings]
    raw = [
        reliability.of(r.source, dimension) * r.confidence if v is not None else 0.0
        for r, v in zip(readings, values, strict=True)
    ]
    total = sum(raw)
    if total <= 0:
        # Nobody measured this dimension with any confidence: it stays unknown.
        return {
            "value": None,
            "confidence": 0.0,
            "disagreement": 0.0,
            "weights": [0.0] * len(readings),
        }
    weights = [w / total for w in raw]
    value = sum(w * v for w, v in zip(weights, values, strict=True) if w > 0)
    spread = math.sqrt(
        sum(w * (v - value) ** 2 for w, v in zip(weights, values, strict=True) if w > 0)
    )
    disagreement = min(1.0, spread)
    mean_confidence = sum(w * r.confidence for w, r in zip(weights, readings, strict=True))
    return {
        "value": round(value, 4),
        "confidence": round(mean_confidence * (1.0 - disagreement), 4),
        "disagreement": round(disagreement, 4),
        "weights": [round(w, 6) for w in weights],
    }
