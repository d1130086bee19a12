"""Fusion: weights, pass-through, disagreement, labels; bad bodies are 422 naming the field."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from emotion_support import run_job
from pydantic import ValidationError

from shortdrama_emotion.circumplex import nearest_label
from shortdrama_emotion.fusion import FusionSettings, ModuleReading, Reliability, fuse

DEFAULT = Reliability()


def reading(source: str, valence: float | None, arousal: float | None, confidence: float) -> Any:
    return ModuleReading.model_validate(
        {"source": source, "valence": valence, "arousal": arousal, "confidence": confidence}
    )


MIXES = [
    [reading("face", 0.8, 0.5, 0.9), reading("voice", None, -0.2, 0.5)],
    [reading("text", -0.6, None, 0.7), reading("voice", 0.1, 0.9, 0.3)],
    [
        reading("face", 0.2, 0.1, 0.4),
        reading("text", 0.9, None, 1.0),
        reading("voice", None, 0.4, 0.6),
    ],
    [reading("face", -0.9, 0.7, 0.2), reading("face", 0.9, -0.7, 0.8)],
]


@pytest.mark.parametrize("readings", MIXES)
def test_weights_sum_to_one_on_every_measured_dimension(readings: list[ModuleReading]) -> None:
    state = fuse(readings, DEFAULT)
    for dimension in ("valence", "arousal"):
        assert sum(w[dimension] for w in state["weights"]) == pytest.approx(1.0, abs=1e-5)
    assert [w["source"] for w in state["weights"]] == [r.source for r in readings]


def test_a_dimension_nobody_measured_weighs_nothing_and_stays_unknown() -> None:
    state = fuse([reading("text", 0.7, None, 0.8)], DEFAULT)
    assert state["arousal"] is None
    assert state["weights"] == [{"source": "text", "valence": 1.0, "arousal": 0.0}]
    assert state["label"] is None  # a point on the circumplex needs both coordinates


@pytest.mark.parametrize(
    ("valence", "arousal", "confidence"), [(0.8, 0.5, 0.9), (-0.4, -0.6, 0.3), (0.0, 0.9, 1.0)]
)
def test_a_single_source_passes_through(valence: float, arousal: float, confidence: float) -> None:
    state = fuse([reading("face", valence, arousal, confidence)], DEFAULT)
    assert (state["valence"], state["arousal"]) == (valence, arousal)
    assert state["confidence"] == confidence
    assert state["disagreement"] == 0.0
    assert state["label"] == nearest_label(valence, arousal)


def test_disagreeing_sources_lower_confidence() -> None:
    agree = fuse([reading("face", 0.7, 0.4, 0.8), reading("text", 0.6, None, 0.8)], DEFAULT)
    clash = fuse([reading("face", 0.7, 0.4, 0.8), reading("text", -0.7, None, 0.8)], DEFAULT)
    assert clash["disagreement"] > agree["disagreement"]
    assert clash["confidence"] < agree["confidence"]
    assert clash["dimensions"]["valence"]["confidence"] < 0.8


def test_reliability_decides_who_leads_each_dimension() -> None:
    # Text is trusted on valence, voice on arousal (the default reliabilities).
    state = fuse([reading("text", -0.8, 0.8, 0.8), reading("voice", 0.8, -0.8, 0.8)], DEFAULT)
    assert state["valence"] < 0 < -state["arousal"]
    text, voice = state["weights"]
    assert text["valence"] > voice["valence"] and voice["arousal"] > text["arousal"]


def test_the_settings_change_the_reliabilities() -> None:
    settings = FusionSettings.model_validate(
        {"reliability": {"text": {"valence": 0.1, "arousal": 0.0}}}
    )
    state = fuse(
        [reading("text", -0.8, None, 0.8), reading("face", 0.8, 0.2, 0.8)], settings.reliability
    )
    assert state["valence"] > 0  # the face now outweighs the text
    with pytest.raises(ValidationError, match=r"reliability\.text\.valence"):
        FusionSettings.model_validate({"reliability": {"text": {"valence": 2, "arousal": 0}}})


def test_labels_are_the_nearest_circumplex_points() -> None:
    assert nearest_label(0.8, 0.1) == "happy"
    assert nearest_label(0.5, 0.6) == "excited"
    assert nearest_label(-0.6, -0.3) == "sad"
    assert nearest_label(0.5, -0.5) == "calm"
    assert nearest_label(0.1, -0.1) == "neutral"


def test_fused_values_stay_in_range() -> None:
    grid = [-1.0, -0.3, 0.0, 0.5, 1.0]
    for v1, a1, v2, a2 in itertools.product(grid, repeat=4):
        state = fuse([reading("face", v1, a1, 0.9), reading("voice", v2, a2, 0.4)], DEFAULT)
        assert -1 <= state["valence"] <= 1 and -1 <= state["arousal"] <= 1
        assert 0 <= state["confidence"] <= 1 and 0 <= state["disagreement"] <= 1


async def test_getemotionstate_body_is_fused_by_the_daemon(client: Any) -> None:
    body = {
        "modules": [
            {"source": "face", "valence": 0.8, "arousal": 0.5, "confidence": 0.9},
            {"source": "voice", "valence": None, "arousal": 0.7, "confidence": 0.5},
            {"source": "text", "valence": 0.6, "arousal": None, "confidence": 0.7},
        ]
    }
    job = await run_job(client, "emotion-state", body)
    assert job["status"] == "completed", job
    state = job["result"]
    assert state["valence"] > 0.5 and state["arousal"] > 0.4
    assert state["label"] in {"happy", "excited"}
    assert [w["source"] for w in state["weights"]] == ["face", "voice", "text"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"modules": []}, "modules"),
        ({}, "modules"),
        (
            {"modules": [{"source": "face", "valence": 1.5, "arousal": 0, "confidence": 1}]},
            "modules.0.valence",
        ),
        (
            {"modules": [{"source": "face", "valence": 0, "arousal": -2, "confidence": 1}]},
            "modules.0.arousal",
        ),
        (
            {"modules": [{"source": "face", "valence": 0, "arousal": 0, "confidence": 1.2}]},
            "modules.0.confidence",
        ),
        (
            {"modules": [{"source": "smell", "valence": 0, "arousal": 0, "confidence": 1}]},
            "modules.0.source",
        ),
        (
            {"modules": [{"source": "face", "valence": None, "arousal": None, "confidence": 1}]},
            "modules.0",
        ),
    ],
)
async def test_out_of_range_and_empty_bodies_are_422_naming_the_field(
    client: Any, body: dict[str, Any], field: str
) -> None:
    resp = await client.post("/api/v1/emotion-state/jobs", json=body)
    assert resp.status == 422, await resp.text()
    error = (await resp.json())["error"]
    assert field in [f["field"] for f in error["fields"]], error
    assert field in error["message"]
