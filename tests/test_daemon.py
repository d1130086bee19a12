"""The daemon as an operator runs it: real processes, real signals, the CLI."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from shortdrama_worker.provenance.certs import DevCertificate

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "shortdrama_worker"]
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def daemon_env(moto_endpoint: str, dev_certificate: DevCertificate) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:8]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHORTDRAMA_")}
    env.update(
        {
            "SHORTDRAMA_AWS__ENDPOINT_URL": moto_endpoint,
            "SHORTDRAMA_QUEUES__GPU_QUEUE": f"gpu_{suffix}",
            "SHORTDRAMA_QUEUES__CPU_QUEUE": f"cpu_{suffix}",
            "SHORTDRAMA_QUEUES__WAIT_TIME_S": "1",
            "SHORTDRAMA_QUEUES__VISIBILITY_TIMEOUT_S": "10",
            "SHORTDRAMA_STORE__TABLE": f"task_store_{suffix}",
            "SHORTDRAMA_RESULTS__BUCKET": f"results-{suffix}",
            "SHORTDRAMA_CONSUMER__SHUTDOWN_GRACE_S": "1",
            "SHORTDRAMA_LOG__FORMAT": "json",
            "SHORTDRAMA_HANDLERS__ALLOW": '["face_mask", "example_echo"]',
            "SHORTDRAMA_PROVENANCE__CERTIFICATE": str(dev_certificate.chain),
            "SHORTDRAMA_PROVENANCE__PRIVATE_KEY": str(dev_certificate.key),
        }
    )
    return env


class Daemon:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._out = log.open("wb")
        self.proc = subprocess.Popen(
            [*CLI, "serve"],
            env={**env, "SHORTDRAMA_API__PORT": str(self.port)},
            stdout=self._out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )

    async def ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, self.log.read_text()
                try:
                    async with http.get(f"{self.url}/ready") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"daemon not ready: {self.log.read_text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        self._out.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._out.close()


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.kill()


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env=env, capture_output=True, text=True, timeout=60, cwd=REPO
    )


def test_init_is_idempotent(daemon_env: dict[str, str]) -> None:
    first = run_cli("init", env=daemon_env)
    assert first.returncode == 0, first.stderr
    assert "created" in first.stdout
    second = run_cli("init", env=daemon_env)
    assert second.returncode == 0, second.stderr
    assert "table task_store_" in second.stdout and "exists" in second.stdout


def test_a_bad_setting_stops_start_up_naming_it(daemon_env: dict[str, str]) -> None:
    result = run_cli("serve", env={**daemon_env, "SHORTDRAMA_GPU__SLOTS": "zero"})
    assert result.returncode == 2
    assert "gpu.slots" in result.stderr


def test_submit_needs_something_to_submit(daemon_env: dict[str, str]) -> None:
    result = run_cli("submit", "face-mask", env=daemon_env)
    assert result.returncode == 2
    assert "nothing to submit" in result.stderr


async def test_submit_wait_output_and_sigterm_mid_job_loses_nothing(
    daemon_env: dict[str, str], daemons: list[Daemon], tmp_path: Path
) -> None:
    assert run_cli("init", env=daemon_env).returncode == 0
    first = Daemon(daemon_env, tmp_path / "first.log")
    daemons.append(first)
    await first.ready()

    # The README walk-through: submit a local image, wait, download the result.
    out = tmp_path / "masked.png"
    done = await asyncio.to_thread(
        run_cli, "submit", "face-mask", "--api", first.url, "--image",
        str(REPO / "examples" / "face.png"), "--wait", "--output", str(out), env=daemon_env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    with Image.open(out) as masked:
        assert masked.size == (512, 512)

    async with aiohttp.ClientSession() as http:
        payload = {"text": "slow", "delay_s": 6}
        async with http.post(f"{first.url}/api/v1/example-echo/jobs", json=payload) as resp:
            job_id = (await resp.json())["job_id"]
        status_url = f"{first.url}/api/v1/jobs/{job_id}"
        for _ in range(100):
            async with http.get(status_url) as resp:
                if (await resp.json())["status"] == "processing":
                    break
            await asyncio.sleep(0.1)
        assert await asyncio.to_thread(first.stop) == 0
        assert '"event": "grace_period_over"' in first.log.read_text()

        second = Daemon(daemon_env, tmp_path / "second.log")
        daemons.append(second)
        await second.ready()
        status_url = f"{second.url}/api/v1/jobs/{job_id}"
        job: dict[str, Any] = {}
        for _ in range(200):
            async with http.get(status_url) as resp:
                job = await resp.json()
            if job["status"] in ("completed", "failed", "cancelled"):
                break
            await asyncio.sleep(0.1)
    assert job["status"] == "completed"
    assert job["attempts"] == 1, "the interrupted attempt was handed back, not counted"
    status = run_cli("status", job_id, "--api", second.url, env=daemon_env)
    assert status.returncode == 0 and '"completed"' in status.stdout
    assert await asyncio.to_thread(second.stop) == 0


async def poll_until_done(url: str, timeout: float = 40) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            async with http.get(url) as resp:
                job = await resp.json()
            if job["status"] in ("completed", "failed", "cancelled"):
                return job
            await asyncio.sleep(0.1)
    raise AssertionError(f"still {job.get('status')}: {job}")


async def start_slow_job_then_kill(
    env: dict[str, str], daemons: list[Daemon], tmp_path: Path
) -> str:
    first = Daemon(env, tmp_path / "killed.log")
    daemons.append(first)
    await first.ready()
    async with aiohttp.ClientSession() as http:
        payload = {"text": "slow", "delay_s": 4}
        async with http.post(f"{first.url}/api/v1/example-echo/jobs", json=payload) as resp:
            body = await resp.json()
            assert resp.status == 202, body
            job_id = str(body["job_id"])
        for _ in range(100):
            async with http.get(f"{first.url}/api/v1/jobs/{job_id}") as resp:
                if (await resp.json())["status"] == "processing":
                    break
            await asyncio.sleep(0.1)
    first.kill()  # SIGKILL: no drain, no hand-back
    return job_id


async def test_kill_9_mid_job_completes_once_on_another_instance(
    daemon_env: dict[str, str], daemons: list[Daemon], tmp_path: Path
) -> None:
    env = {**daemon_env, "SHORTDRAMA_QUEUES__VISIBILITY_TIMEOUT_S": "5"}
    assert run_cli("init", env=env).returncode == 0
    job_id = await start_slow_job_then_kill(env, daemons, tmp_path)
    second = Daemon(env, tmp_path / "second.log")
    daemons.append(second)
    await second.ready()
    # The killed run's lease and message visibility run out; the job is taken over.
    async with aiohttp.ClientSession() as http:
        payload = {"text": "fast"}
        async with http.post(f"{second.url}/api/v1/example-echo/jobs", json=payload) as resp:
            assert resp.status == 202
            fast_id = (await resp.json())["job_id"]
    job = await poll_until_done(f"{second.url}/api/v1/jobs/{job_id}", timeout=60)
    assert job["status"] == "completed"
    assert job["attempts"] == 2
    assert (await poll_until_done(f"{second.url}/api/v1/jobs/{fast_id}"))["status"] == "completed"
    # A finished job is readable a moment before its job_finished line is written:
    # stop the daemon, so that its log is whole when it is read.
    assert second.stop() == 0
    log = (tmp_path / "second.log").read_text()
    assert log.count(f'"job_id": "{job_id}"') >= 1
    assert log.count('"event": "job_finished"') == 2  # the taken-over job and the fast one


async def test_kill_9_on_the_last_attempt_fails_instead_of_hanging(
    daemon_env: dict[str, str], daemons: list[Daemon], tmp_path: Path
) -> None:
    env = {
        **daemon_env,
        "SHORTDRAMA_QUEUES__VISIBILITY_TIMEOUT_S": "5",
        "SHORTDRAMA_CONSUMER__MAX_ATTEMPTS": "1",
    }
    assert run_cli("init", env=env).returncode == 0
    job_id = await start_slow_job_then_kill(env, daemons, tmp_path)
    second = Daemon(env, tmp_path / "second.log")
    daemons.append(second)
    await second.ready()
    job = await poll_until_done(f"{second.url}/api/v1/jobs/{job_id}", timeout=30)
    assert job["status"] == "failed"
    assert job["error_message"] == "gave up after 1 attempts; last error: worker lost mid-run"


def test_a_port_in_use_stops_start_up_with_a_clear_message(daemon_env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", env={**daemon_env, "SHORTDRAMA_API__PORT": str(port),
                                       "SHORTDRAMA_LOCAL__PROVISION": "true"})  # fmt: skip
    # Found before anything is provisioned, naming what to change: a usage error.
    assert result.returncode == 2
    assert f"port {port} on 127.0.0.1 is not free" in result.stderr
    assert "SHORTDRAMA_API__PORT" in result.stderr
    assert "provisioned" not in result.stdout + result.stderr


async def test_kill_9_with_a_prompt_queued_ahead_in_comfyui_completes_both_jobs_once(
    daemon_env: dict[str, str], daemons: list[Daemon], tmp_path: Path
) -> None:
    import base64

    from fakes.comfyui import FakeComfyUI, Script, png_bytes

    image = "data:image/png;base64," + base64.b64encode(png_bytes(3, size=(64, 48))).decode()
    async with FakeComfyUI(default=Script(exec_s=1.5)) as comfy:
        env = {
            **daemon_env,
            "SHORTDRAMA_QUEUES__VISIBILITY_TIMEOUT_S": "5",
            "SHORTDRAMA_CONSUMER__CONSUME": '["gpu"]',
            "SHORTDRAMA_HANDLERS__ALLOW": '["comfy_camera_angle"]',
            "SHORTDRAMA_HANDLERS__OPTIONS": (
                f'{{"comfy_camera_angle": {{"base_url": "{comfy.url}", "queue_ahead": 1}}}}'
            ),
        }
        assert run_cli("init", env=env).returncode == 0
        first = Daemon(env, tmp_path / "first.log")
        daemons.append(first)
        await first.ready()
        job_ids = []
        async with aiohttp.ClientSession() as http:
            for move in ("close_up", "rotate_left"):
                body = {"image": image, "move": move}
                async with http.post(f"{first.url}/api/v1/camera-angle/jobs", json=body) as resp:
                    assert resp.status == 202, await resp.text()
                    job_ids.append(str((await resp.json())["job_id"]))
        # One prompt running, the other queued ahead inside ComfyUI: then SIGKILL.
        await comfy.wait_running(timeout=20)
        await comfy.wait_pending(1, timeout=20)
        first.kill()

        second = Daemon(env, tmp_path / "second.log")
        daemons.append(second)
        await second.ready()
        for job_id in job_ids:
            job = await poll_until_done(f"{second.url}/api/v1/jobs/{job_id}", timeout=60)
            assert (job["status"], job["attempts"]) == ("completed", 2)
        # The killed worker's two prompts still ran (for nobody), then each job once more.
        assert len(comfy.executions) == 4
        assert second.stop() == 0  # its log is whole once it has stopped
        log = (tmp_path / "second.log").read_text()
        assert log.count('"event": "job_finished"') == 2
