"""Every kind end to end: the host daemon finds the plugin through its entry points
and runs its jobs through the same API, queue, store and metrics as its own."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from typing import Any

from conftest import KINDS, to_mp3
from emotion_support import audio_uri, png_uri, run_job, sample_face_uri
from PIL import Image


def test_the_cli_lists_the_kinds_under_this_distribution() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "shortdrama_worker", "handlers"],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "SHORTDRAMA_HANDLERS__ALLOW": json.dumps(KINDS)},
    )
    rows = [line.split() for line in done.stdout.splitlines()[1:]]
    assert sorted(row[0] for row in rows) == sorted(KINDS)
    assert {row[-1] for row in rows} == {"shortdrama-emotion"}


async def test_face_emotion_reads_the_smiling_sample(client: Any) -> None:
    job = await run_job(client, "face-emotion", {"image_url": sample_face_uri()})
    assert job["status"] == "completed", job
    result = job["result"]
    assert result["faces_found"] == 1 and result["model"].startswith("fer 25.10.3")
    [face] = result["faces"]
    assert face["top"] == "happy" and face["valence"] > 0.5
    assert face["box"]["width"] > 50


async def test_a_faceless_image_fails_with_no_face_found(client: Any) -> None:
    blank = png_uri(Image.new("RGB", (320, 240), "gray"))
    job = await run_job(client, "face-emotion", {"image_url": blank})
    assert job["status"] == "failed"
    assert job["error_message"] == "no face found"
    assert job["attempts"] == 1


async def test_face_index_out_of_range_is_a_clear_error(client: Any) -> None:
    job = await run_job(client, "face-emotion", {"image_url": sample_face_uri(), "face_index": 2})
    assert job["status"] == "failed"
    assert job["error_message"].startswith("face_index 2 is out of range: 1 face(s) found")


async def test_voice_emotion_reads_mp3(client: Any, speech: dict[str, bytes]) -> None:
    mp3 = audio_uri(to_mp3(speech["excited"]), "audio/mpeg")
    job = await run_job(client, "voice-emotion", {"audio_url": mp3})
    assert job["status"] == "completed", job
    result = job["result"]
    assert result["content_type"] == "audio/mpeg"
    assert result["arousal"] > 0.3 and result["valence"] is None
    assert set(result["features"]) >= {"pitch_range_semitones", "loudness_dbfs"}


async def test_an_image_sent_as_audio_is_refused_at_submit_naming_the_field(client: Any) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    # A PNG labelled audio/wav: the host sniffs the bytes against the field's types.
    resp = await client.post(
        "/api/v1/voice-emotion/jobs", json={"audio_url": audio_uri(buffer.getvalue())}
    )
    assert resp.status == 422
    error = (await resp.json())["error"]
    assert error["fields"][0]["field"] == "audio_url"
    assert error["message"] == "audio_url: is image/png; expected audio/wav, audio/mpeg"


async def test_text_sentiment_detects_chinese(client: Any) -> None:
    job = await run_job(client, "text-sentiment", {"text": "太好了，我非常满意，谢谢你！"})
    assert job["status"] == "completed", job
    assert job["result"]["language"] == "zh" and job["result"]["valence"] > 0


async def test_unsupported_script_fails_naming_the_field(client: Any) -> None:
    job = await run_job(client, "text-sentiment", {"text": "Я тебя люблю"})
    assert job["status"] == "failed"
    assert job["error_message"].startswith("text: is neither English nor Chinese")


async def test_emotion_state_fuses_a_getemotionstate_body(client: Any) -> None:
    body = {"modules": [{"source": "text", "valence": -0.7, "arousal": 0.2, "confidence": 0.9}]}
    job = await run_job(client, "emotion-state", body)
    assert job["status"] == "completed", job
    assert job["result"]["valence"] == -0.7 and job["result"]["label"] == "distressed"


async def test_one_call_analysis_reads_all_three_and_fuses_them(
    client: Any, speech: dict[str, bytes]
) -> None:
    payload = {
        "image_url": sample_face_uri(),
        "audio_url": audio_uri(speech["excited"]),
        "text": "I love you, this is the happiest day of my life!",
    }
    job = await run_job(client, "emotion-analysis", payload)
    assert job["status"] == "completed", job
    result = job["result"]
    assert result["face"]["top"] == "happy"
    assert result["voice"]["arousal"] > 0.3
    assert result["text"]["valence"] > 0.5
    assert result["errors"] == {}
    state = result["state"]
    assert state["valence"] > 0.5 and state["arousal"] > 0.3
    assert state["label"] in {"happy", "excited"}
    assert [w["source"] for w in state["weights"]] == ["face", "voice", "text"]


async def test_one_call_analysis_fuses_what_it_can_read(client: Any) -> None:
    blank = png_uri(Image.new("RGB", (320, 240), "gray"))
    job = await run_job(client, "emotion-analysis", {"image_url": blank, "text": "I hate you."})
    assert job["status"] == "completed", job
    result = job["result"]
    assert result["errors"] == {"face": {"code": "no_face", "message": "no face found"}}
    assert "face" not in result and result["state"]["valence"] < 0


async def test_one_call_analysis_needs_something_to_read(client: Any) -> None:
    resp = await client.post("/api/v1/emotion-analysis/jobs", json={"face_index": 0})
    assert resp.status == 422
    message = (await resp.json())["error"]["message"]
    assert "at least one of image_url, audio_url and text" in message
