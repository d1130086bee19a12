"""Valence and arousal: the face model's classes on them, and the labels around them.

Both dimensions run from -1 to 1. Valence is unpleasant → pleasant, arousal
is deactivated (sleepy, calm) → activated (alarmed, excited); 0 is neutral on
both. These numbers are a documented convention of this plugin, not a model.
"""

from __future__ import annotations

import math

# Where each of the face model's seven classes sits, as (valence, arousal): the
# pleasure and arousal ratings of the emotion terms in Russell & Mehrabian
# (1977), "Evidence for a three-factor theory of emotions", rounded. A face
# reading's valence and arousal are these points weighted by the class
# probabilities; "neutral" is the origin.
CLASS_POINTS: dict[str, tuple[float, float]] = {
    "angry": (-0.51, 0.59),
    "disgust": (-0.60, 0.35),
    "fear": (-0.64, 0.60),
    "happy": (0.81, 0.51),
    "sad": (-0.63, -0.27),
    "surprise": (0.40, 0.67),
    "neutral": (0.0, 0.0),
}

# Labels of a fused state: eight affect terms at their angles on Russell's
# (1980) circumplex (degrees counter-clockwise from pleasant), placed at radius
# LABEL_RADIUS, and "neutral" at the origin. The label is the nearest point, so
# a state within LABEL_RADIUS / 2 of the origin reads "neutral".
LABEL_ANGLES: dict[str, float] = {
    "happy": 8.0,
    "excited": 49.0,
    "tense": 92.0,
    "distressed": 138.0,
    "sad": 208.0,
    "bored": 240.0,
    "tired": 268.0,
    "calm": 316.0,
}
LABEL_RADIUS = 0.8


def _label_points() -> dict[str, tuple[float, float]]:
    points = {
        name: (
            LABEL_RADIUS * math.cos(math.radians(angle)),
            LABEL_RADIUS * math.sin(math.radians(angle)),
        )
        for name, angle in LABEL_ANGLES.items()
    }
    points["neutral"] = (0.0, 0.0)
    return points


LABEL_POINTS = _label_points()


def nearest_label(valence: float, arousal: float) -> str:
    """The circumplex label nearest to (valence, arousal)."""
    return min(
        LABEL_POINTS,
        key=lambda name: math.dist((valence, arousal), LABEL_POINTS[name]),
    )


def class_valence_arousal(probabilities: dict[str, float]) -> tuple[float, float]:
    """The probability-weighted mean of the classes' points."""
    total = sum(probabilities.values()) or 1.0
    valence = sum(p * CLASS_POINTS[c][0] for c, p in probabilities.items()) / total
    arousal = sum(p * CLASS_POINTS[c][1] for c, p in probabilities.items()) / total
    return valence, arousal
