"""Helpers for the tests: the sample face, data: URIs, job API polling."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from PIL import Image
from shortdrama_worker.contract.testing import data_uri

# The repository's sample frame: NASA's public-domain portrait of a smiling astronaut.
SAMPLE_FACE = Path(__file__).resolve().parents[3] / "examples" / "face.png"


def png_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return data_uri(buffer.getvalue(), "image/png")


def sample_face_uri() -> str:
    """The sample as a JPEG: small enough for one request body without a warning."""
    buffer = io.BytesIO()
    Image.open(SAMPLE_FACE).convert("RGB").save(buffer, format="JPEG", quality=90)
    return data_uri(buffer.getvalue(), "image/jpeg")


def audio_uri(data: bytes, content_type: str = "audio/wav") -> str:
    return data_uri(data, content_type)


async def submit(
    client: TestClient,  # type: ignore[type-arg]
    slug: str,
    payload: dict[str, Any],
) -> str:
    resp = await client.post(f"/api/v1/{slug}/jobs", json=payload)
    assert resp.status == 202, await resp.text()
    return str((await resp.json())["job_id"])


async def wait_for(
    client: TestClient,  # type: ignore[type-arg]
    job_id: str,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Poll the job API until the job has finished, by the clock."""
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        resp = await client.get(f"/api/v1/jobs/{job_id}")
        assert resp.status == 200, await resp.text()
        job = await resp.json()
        if job["status"] in ("completed", "failed", "cancelled"):
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} still {job.get('status')} after {timeout} s: {job}")


async def run_job(
    client: TestClient,  # type: ignore[type-arg]
    slug: str,
    payload: dict[str, Any],
) -> dict[str, Any]:
    return await wait_for(client, await submit(client, slug, payload))
