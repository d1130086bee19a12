"""Fixtures: the daemon built by the host's ``create_app`` on moto in server mode,
finding this plugin through its entry points, and real speech made with espeak-ng.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
from aiohttp.test_utils import TestClient, TestServer
from moto.server import ThreadedMotoServer
from shortdrama_worker.app import create_app
from shortdrama_worker.settings import Settings, load_settings

KINDS = ["face_emotion", "voice_emotion", "text_sentiment", "emotion_state", "emotion_analysis"]

LINE = (
    "I think we should wait for the morning train, and talk about it then. "
    "Nobody has to decide anything tonight."
)
# espeak-ng SSML prosody: the same line read flat, slow and soft, or high,
# wide, fast and loud, as a calm and an excited speaker would.
PROSODY = {
    "calm": "rate='80%' pitch='-20%' range='30%' volume='-20%'",
    "excited": "rate='160%' pitch='+50%' range='200%' volume='+60%'",
}


@pytest.fixture(scope="session")
def speech() -> dict[str, bytes]:
    """WAV files of ``LINE`` at each ``PROSODY`` setting."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise RuntimeError("these tests need espeak-ng (Debian package espeak-ng)")
    clips = {}
    for name, prosody in PROSODY.items():
        ssml = f"<speak><prosody {prosody}>{LINE}</prosody></speak>"
        done = subprocess.run([espeak, "-m", "--stdout", ssml], capture_output=True, check=True)
        clips[name] = done.stdout
    return clips


def to_mp3(wav: bytes) -> bytes:
    """The same audio as MP3, encoded by the libsndfile inside soundfile."""
    samples, rate = soundfile.read(io.BytesIO(wav))
    out = io.BytesIO()
    soundfile.write(out, samples, rate, format="MP3")
    return out.getvalue()


def tone_wav(seconds: float, *, rate: int = 16000, amplitude: float = 0.0) -> bytes:
    """A WAV of silence (or a steady 220 Hz hum), ``seconds`` long."""
    t = np.arange(int(seconds * rate)) / rate
    out = io.BytesIO()
    soundfile.write(out, amplitude * np.sin(2 * np.pi * 220 * t), rate, format="WAV")
    return out.getvalue()


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto in server mode: every AWS call in the tests crosses real HTTP."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def make_settings(
    moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Callable[..., Settings]:
    """Host settings with names unique to the test, serving this plugin's kinds."""
    for name in list(os.environ):
        if name.startswith("SHORTDRAMA_"):
            monkeypatch.delenv(name)
    suffix = uuid.uuid4().hex[:8]

    def make(**sections: Any) -> Settings:
        base: dict[str, Any] = {
            "aws": {"endpoint_url": moto_endpoint},
            "queues": {
                "gpu_queue": f"gpu_{suffix}",
                "cpu_queue": f"cpu_{suffix}",
                "visibility_timeout_s": 30,
                "wait_time_s": 1,
            },
            "store": {"table": f"task_store_{suffix}"},
            "results": {"bucket": f"results-{suffix}"},
            "api": {"port": 0},
            "consumer": {"backoff_base_s": 0.2, "backoff_max_s": 1.0, "shutdown_grace_s": 2.0},
            "local": {"provision": True},
            # Discovery through entry points, as in production.
            "handlers": {"allow": KINDS},
            # Image results are signed as in production, with a development certificate.
            "provenance": {"dev_certificate": True, "dev_certificate_dir": str(tmp_path / "dev")},
        }
        for section, values in sections.items():
            if isinstance(values, dict) and isinstance(base.get(section), dict):
                base[section] = {**base[section], **values}
            else:
                base[section] = values
        return load_settings(None, **base)

    return make


Client = TestClient  # type: ignore[type-arg]


@pytest.fixture
async def start_app() -> AsyncIterator[Callable[[Settings], Awaitable[Client]]]:
    """Start the host application; it is stopped (and drained) at the end of the test."""
    clients: list[Client] = []

    async def start(settings: Settings) -> Client:
        client = TestClient(TestServer(create_app(settings)))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in reversed(clients):
        await client.close()


@pytest.fixture
async def client(
    make_settings: Callable[..., Settings], start_app: Callable[[Settings], Awaitable[Client]]
) -> Client:
    return await start_app(make_settings())
