"""Result links stay good for as long as the job record lives.

Records hold object keys; every URL in a job (``result_url``, the links a
handler put in ``result``, ``files[].url``) is signed when the job is read.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from support import wait_for

from shortdrama_worker import keys
from shortdrama_worker.handlers.face_mask import FaceMaskHandler
from shortdrama_worker.plugins import HandlerRegistry

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "face.png"


def _signed_at(url: str) -> float:
    stamp = parse_qs(urlsplit(url).query)["X-Amz-Date"][0]  # 20261202T035012Z
    return time.mktime(time.strptime(stamp, "%Y%m%dT%H%M%SZ")) - time.timezone


def _links(job: dict[str, Any]) -> list[str]:
    result = job["result"]
    return [job["result_url"], result["image_url"], *(f["url"] for f in result["files"])]


async def test_every_link_in_a_job_is_signed_when_read_not_when_stored(
    make_settings: Any, start_app: Any, aws: Any
) -> None:
    app, client = await start_app(
        make_settings(), HandlerRegistry.from_classes({"face_mask": FaceMaskHandler})
    )
    image = "data:image/png;base64," + base64.b64encode(SAMPLE.read_bytes()).decode()
    body = io.BytesIO(json.dumps({"image_url": image}).encode())
    resp = await client.post(
        "/api/v1/face-mask/jobs", data=body, headers={"Content-Type": "application/json"}
    )
    job_id = (await resp.json())["job_id"]
    first = await wait_for(client, job_id)
    assert first["status"] == "completed", first

    # The record keeps keys only: nothing in it can expire.
    record = await app[keys.STORE].get(job_id)
    assert record is not None and record.result_url is None
    assert "X-Amz-" not in json.dumps(record.result)

    await asyncio.sleep(1.1)  # the next read is signed in a later second
    later = await (await client.get(f"/api/v1/jobs/{job_id}")).json()
    assert len(_links(later)) == 3
    for before, after in zip(_links(first), _links(later), strict=True):
        assert urlsplit(before).path == urlsplit(after).path
        assert _signed_at(after) > _signed_at(before)  # a fresh signature, a fresh expiry
        async with client.session.get(after) as fetched:
            assert fetched.status == 200
            assert fetched.headers["Content-Type"] == "image/png"
            assert parsedate_to_datetime(fetched.headers["Last-Modified"])
