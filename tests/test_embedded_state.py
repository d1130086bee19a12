"""The embedded default keeps jobs and result files across restarts, kill -9 included."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from test_daemon import Daemon, free_port

pytestmark = pytest.mark.slow


def embedded_env(state_dir: Path, aws_port: int, consume: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHORTDRAMA_")}
    env.update(
        {
            "SHORTDRAMA_LOCAL__EMBEDDED_AWS": "true",
            "SHORTDRAMA_LOCAL__EMBEDDED_AWS_PORT": str(aws_port),
            "SHORTDRAMA_LOCAL__STATE_DIR": str(state_dir),
            "SHORTDRAMA_QUEUES__WAIT_TIME_S": "1",
            "SHORTDRAMA_QUEUES__VISIBILITY_TIMEOUT_S": "10",
            "SHORTDRAMA_CONSUMER__SHUTDOWN_GRACE_S": "1",
            # No CPU slot: jobs are accepted and stay pending.
            "SHORTDRAMA_CONSUMER__MAX_IN_FLIGHT": f'{{"gpu": 1, "cpu": {4 if consume else 0}}}',
            "SHORTDRAMA_LOG__FORMAT": "json",
            "SHORTDRAMA_HANDLERS__ALLOW": '["example_echo"]',
            # Results are signed, as on the embedded default (config/local.toml).
            "SHORTDRAMA_PROVENANCE__DEV_CERTIFICATE": "true",
            "SHORTDRAMA_PROVENANCE__DEV_CERTIFICATE_DIR": str(state_dir / "dev-certificate"),
        }
    )
    return env


async def call(method: str, url: str, **kwargs: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.request(method, url, **kwargs) as resp:
        return resp.status, await resp.json()


async def download(url: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.read()


async def finished(url: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status, job = await call("GET", url)
        assert status == 200, job
        if job["status"] in ("completed", "failed", "cancelled") or time.monotonic() > deadline:
            return dict(job)
        await asyncio.sleep(0.2)


async def test_jobs_results_and_old_links_survive_kill_9_and_restarts(tmp_path: Path) -> None:
    state, aws_port = tmp_path / "state", free_port()

    async def start(consume: bool, name: str) -> Daemon:
        daemon = Daemon(embedded_env(state, aws_port, consume), tmp_path / f"{name}.log")
        await daemon.ready(timeout=60)
        return daemon

    first = await start(True, "first")
    status, accepted = await call(
        "POST", f"{first.url}/api/v1/example-echo/jobs", json={"text": "kept"}
    )
    assert status == 202
    done = await finished(f"{first.url}/api/v1/jobs/{accepted['job_id']}")
    assert done["status"] == "completed"
    old_link = done["result_url"]
    first.kill()  # kill -9: no snapshot, only the journal

    second = await start(False, "second")  # no slot: the next job stays pending
    status, job = await call("GET", f"{second.url}/api/v1/jobs/{accepted['job_id']}")
    assert status == 200 and job["status"] == "completed" and job["result"]["echo"] == "kept"
    for link in (old_link, job["result_url"]):
        status, body = await download(link)
        assert status == 200 and b'"kept"' in body
    status, pending = await call(
        "POST", f"{second.url}/api/v1/example-echo/jobs", json={"text": "later"}
    )
    assert status == 202
    second.kill()

    third = await start(True, "third")
    later = await finished(f"{third.url}/api/v1/jobs/{pending['job_id']}")
    assert later["status"] == "completed" and later["result"]["echo"] == "later"
    assert later["attempts"] == 1
    assert third.stop() == 0  # a clean stop folds the journal into a snapshot
    assert (state / "snapshot.jsonl").exists()

    fourth = await start(False, "fourth")
    _, listed = await call("GET", f"{fourth.url}/api/v1/jobs")
    assert {j["job_id"]: j["status"] for j in listed["jobs"]} == {
        accepted["job_id"]: "completed",
        pending["job_id"]: "completed",
    }
    status, body = await download(old_link)
    assert status == 200 and b'"kept"' in body
    fourth.stop()


async def test_a_second_daemon_on_the_same_ports_is_refused_before_provisioning(
    tmp_path: Path,
) -> None:
    from test_daemon import run_cli

    aws_port = free_port()
    first = Daemon(embedded_env(tmp_path / "s", aws_port, False), tmp_path / "a.log")
    await first.ready(timeout=60)
    env = {
        **embedded_env(tmp_path / "s2", aws_port, False),
        "SHORTDRAMA_API__PORT": str(first.port),
    }
    began = time.monotonic()
    result = run_cli("serve", env=env)
    assert result.returncode == 2
    assert "SHORTDRAMA_API__PORT" in result.stderr and "api.port" in result.stderr
    assert "provisioned" not in result.stdout + result.stderr
    assert time.monotonic() - began < 10
    env["SHORTDRAMA_API__PORT"] = str(free_port())
    result = run_cli("serve", env=env)
    assert result.returncode == 2
    assert "SHORTDRAMA_LOCAL__EMBEDDED_AWS_PORT" in result.stderr
    first.stop()
