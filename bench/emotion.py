"""The emotion plugin (plugins/emotion): p50 per reading, and one-call analysis jobs/s.

Run: ``.venv/bin/python bench/emotion.py [--rounds 30] [--jobs 20]`` (after ``make emotion``).

Per reading, on one thread, the same functions the handlers call:
- face: ``read_face`` (crop, 64×64 grey, the fer tflite model) per face, beside
  the host's MTCNN detection of the same frame (``examples/face.png``), which
  every face job pays first;
- text: one sentence through VADER (English) and SnowNLP (Chinese), and the
  sign accuracy on 24 hand-written Chinese dialogue lines of known polarity;
- voice: ``read_voice`` on a 10 s espeak-ng clip, WAV and MP3, beside decoding
  alone.
Then ``--jobs`` one-call analyses (frame + 10 s WAV + a line) through the host
daemon on a moto server, beside the same number of fusion-only jobs (the
dispatch floor), as jobs/s.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import soundfile
import structlog
from aiohttp.test_utils import TestClient, TestServer
from moto.server import ThreadedMotoServer
from PIL import Image
from shortdrama_emotion import face
from shortdrama_emotion.text import TextAnalysers
from shortdrama_emotion.voice import read_voice

from shortdrama_worker.app import create_app
from shortdrama_worker.contract.testing import data_uri
from shortdrama_worker.faces.local import LocalFaceDetector
from shortdrama_worker.settings import load_settings

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "face.png"
CHINESE_POSITIVE = [
    "太好了，我非常满意，谢谢你！", "这个礼物真漂亮，我很喜欢。", "我爱你，嫁给我吧。",
    "今天真开心！", "你真是个好人。", "谢谢你一直陪着我。", "我们成功了，太棒了！",
    "这是我这辈子最幸福的一天。", "你做得很好，我为你骄傲。", "真美啊。", "我很感动。",
    "有你在真好。",
]  # fmt: skip
CHINESE_NEGATIVE = [
    "太差了，我很失望。", "你这样做真让人难过，我很伤心。", "我恨你，你毁了一切。", "滚出去！",
    "你这个骗子！", "我再也不想见到你了。", "真恶心。", "他死了，我好难过。",
    "你怎么能这样对我？", "别碰我！", "我受够了。", "这简直是一场噩梦。",
]  # fmt: skip
SPEECH = (
    "I think we should wait for the morning train, and talk about it then. Nobody has to "
    "decide anything tonight. We can call your mother when we arrive, and she will know "
    "what to do about the house."
)


def p50_ms(fn: Callable[[], Any], rounds: int) -> float:
    fn()  # warm
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def ten_second_wav() -> bytes:
    wav = subprocess.run(["espeak-ng", "--stdout", SPEECH], capture_output=True, check=True).stdout
    samples, rate = soundfile.read(io.BytesIO(wav))
    samples = samples[: 10 * rate]
    out = io.BytesIO()
    soundfile.write(out, samples, rate, format="WAV")
    return out.getvalue()


def mp3_of(wav: bytes) -> bytes:
    samples, rate = soundfile.read(io.BytesIO(wav))
    out = io.BytesIO()
    soundfile.write(out, samples, rate, format="MP3")
    return out.getvalue()


def readings(rounds: int, wav: bytes) -> None:
    image = Image.open(SAMPLE).convert("RGB")
    detector = LocalFaceDetector()
    [box] = detector.detect_sync(image)
    model = face.FaceEmotionModel.load()
    grey = face.grey_frame(image)
    detect = p50_ms(lambda: detector.detect_sync(image), rounds)
    classify = p50_ms(lambda: face.read_face(model, grey, box), rounds * 10)
    print("| reading | p50 | beside |")
    print("|---|---|---|")
    print(
        f"| face emotion, per face (crop + fer tflite) | {classify:.2f} ms | MTCNN detection of "
        f"the 512² frame {detect:.1f} ms (×{detect / classify:.0f} the reading) |"
    )
    analysers = TextAnalysers()
    en = p50_ms(lambda: analysers.read_sentence("I hate you. You ruined everything.", "en"), 200)
    zh = p50_ms(lambda: analysers.read_sentence("你这样做真让人难过，我很伤心。", "zh"), 200)
    print(f"| text, per sentence | en (VADER) {en:.3f} ms, zh (SnowNLP) {zh:.3f} ms | |")
    mp3 = mp3_of(wav)
    voice_wav = p50_ms(lambda: read_voice(wav, field="a", max_duration_s=60), rounds)
    voice_mp3 = p50_ms(lambda: read_voice(mp3, field="a", max_duration_s=60), rounds)
    decode = p50_ms(lambda: soundfile.read(io.BytesIO(mp3)), rounds)
    print(
        f"| voice, per 10 s clip | WAV {voice_wav:.1f} ms, MP3 {voice_mp3:.1f} ms | "
        f"MP3 decoding alone {decode:.1f} ms |"
    )
    right = sum(analysers.read(s, "zh")["valence"] > 0 for s in CHINESE_POSITIVE)
    right_neg = sum(analysers.read(s, "zh")["valence"] < 0 for s in CHINESE_NEGATIVE)
    print(
        f"\nSnowNLP sign accuracy on 24 Chinese dialogue lines: {right + right_neg}/24 "
        f"(positive {right}/12, negative {right_neg}/12)"
    )


async def jobs_per_second(endpoint: str, jobs: int, wav: bytes) -> None:
    suffix = uuid.uuid4().hex[:8]
    settings = load_settings(
        None,
        aws={"endpoint_url": endpoint},
        queues={"gpu_queue": f"g{suffix}", "cpu_queue": f"c{suffix}", "wait_time_s": 1},
        store={"table": f"t{suffix}"},
        results={"bucket": f"r-{suffix}"},
        api={"port": 0},
        local={"provision": True},
        # Image results are signed as on the embedded default (development certificate).
        provenance={"dev_certificate": True, "dev_certificate_dir": _cert_dir()},
        handlers={"allow": ["emotion_analysis", "emotion_state"]},
    )
    jpeg = io.BytesIO()
    Image.open(SAMPLE).convert("RGB").save(jpeg, format="JPEG", quality=90)
    analysis = {
        "image_url": data_uri(jpeg.getvalue(), "image/jpeg"),
        "audio_url": data_uri(wav, "audio/wav"),
        "text": "I love you, this is the happiest day of my life!",
    }
    fusion = {"modules": [{"source": "face", "valence": 0.8, "arousal": 0.5, "confidence": 0.9}]}
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    try:
        rates = {}
        for slug, body in (("emotion-state", fusion), ("emotion-analysis", analysis)):
            await run_all(client, slug, body, 2)  # warm
            started = time.perf_counter()
            await run_all(client, slug, body, jobs)
            rates[slug] = jobs / (time.perf_counter() - started)
        print(
            f"\nThrough the daemon ({jobs} jobs submitted at once, moto server): one-call "
            f"analysis {rates['emotion-analysis']:.1f} jobs/s; fusion-only jobs (the dispatch "
            f"floor) {rates['emotion-state']:.1f} jobs/s, "
            f"×{rates['emotion-state'] / rates['emotion-analysis']:.1f}"
        )
    finally:
        await client.close()


async def run_all(client: Any, slug: str, body: dict[str, Any], n: int) -> None:
    ids = []
    for _ in range(n):
        resp = await client.post(f"/api/v1/{slug}/jobs", json=body)
        assert resp.status == 202, await resp.text()
        ids.append((await resp.json())["job_id"])
    for job_id in ids:
        while True:
            job = await (await client.get(f"/api/v1/jobs/{job_id}")).json()
            if job["status"] in ("completed", "failed"):
                assert job["status"] == "completed", job
                break
            await asyncio.sleep(0.02)


def _cert_dir() -> str:
    """One development certificate for every bench run (results are signed as in production)."""
    return str(Path(tempfile.gettempdir()) / "shortdrama-bench-dev-certificate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--jobs", type=int, default=20)
    args = parser.parse_args()
    # The daemon's job lines would interleave with the table on stdout.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    wav = ten_second_wav()
    readings(args.rounds, wav)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        asyncio.run(jobs_per_second(f"http://{host}:{port}", args.jobs, wav))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
