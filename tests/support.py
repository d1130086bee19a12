"""Helpers for tests: API polling and handlers whose behaviour a test controls."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.test_utils import TestClient
from pydantic import Field

from shortdrama_worker.contract import (
    CONTRACT_VERSION,
    Handler,
    HandlerInput,
    JobContext,
    NoSettings,
)
from shortdrama_worker.contract.errors import PermanentJobError, TransientJobError
from shortdrama_worker.contract.fields import ImageRef


class ScriptedInput(HandlerInput):
    fail_times: int = Field(default=0, ge=0, description="Transient failures before success.")
    permanent: str | None = Field(default=None, description="Fail permanently with this text.")
    sleep_s: float = Field(default=0.0, ge=0)
    image_url: ImageRef | None = None


class ScriptedHandler(Handler[Any, NoSettings]):
    """Does what its input says; records every run so tests can count them."""
    contract_version = CONTRACT_VERSION

    resource = "cpu"
    input_model = ScriptedInput
    timeout_s = 30.0
    description = "test handler"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.runs: list[tuple[str, int]] = []
        self.finished: list[str] = []
        self.cancelled: list[str] = []

    async def run(self, params: ScriptedInput, ctx: JobContext) -> dict[str, Any]:
        self.runs.append((ctx.job_id, ctx.attempt))
        try:
            if params.image_url:
                image = await ctx.fetch_image(params.image_url, field="image_url")
                await ctx.progress(10, "fetched")
            if params.sleep_s:
                await asyncio.sleep(params.sleep_s)
        except asyncio.CancelledError:
            self.cancelled.append(ctx.job_id)
            raise
        if params.permanent:
            raise PermanentJobError(params.permanent, code="scripted")
        if ctx.attempt <= params.fail_times:
            raise TransientJobError(f"flaky dependency (attempt {ctx.attempt})")
        stored = await ctx.store_result(b"done", content_type="text/plain", name="out.txt")
        self.finished.append(ctx.job_id)
        result: dict[str, Any] = {"attempt": ctx.attempt, "key": stored.key}
        if params.image_url:
            result["size"] = list(image.size)
        return result


class SlowHandler(ScriptedHandler):
    """The same, with a short timeout."""

    timeout_s = 1.0


class GpuProbeInput(HandlerInput):
    prep_s: float = 0.2
    gpu_s: float = 0.3


class GpuProbeHandler(Handler[Any, NoSettings]):
    """Spends time outside and inside the GPU section; records the overlap."""
    contract_version = CONTRACT_VERSION

    resource = "gpu"
    input_model = GpuProbeInput
    timeout_s = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.in_gpu = 0
        self.max_in_gpu = 0
        self.in_prep = 0
        self.max_concurrent_jobs = 0
        self.active = 0

    async def run(self, params: GpuProbeInput, ctx: JobContext) -> dict[str, Any]:
        self.active += 1
        self.max_concurrent_jobs = max(self.max_concurrent_jobs, self.active)
        try:
            await asyncio.sleep(params.prep_s)  # "uploading inputs"
            async with ctx.gpu():
                self.in_gpu += 1
                self.max_in_gpu = max(self.max_in_gpu, self.in_gpu)
                await asyncio.sleep(params.gpu_s)
                self.in_gpu -= 1
            await asyncio.sleep(params.prep_s)  # "storing outputs"
            return {"ok": True}
        finally:
            self.active -= 1


async def wait_for(
    client: TestClient,  # type: ignore[type-arg]
    job_id: str,
    statuses: tuple[str, ...] = ("completed", "failed", "cancelled"),
    timeout: float = 20.0,
) -> dict[str, Any]:
    """Poll the job API until the job reaches one of ``statuses``."""
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        resp = await client.get(f"/api/v1/jobs/{job_id}")
        assert resp.status == 200, await resp.text()
        job = await resp.json()
        if job["status"] in statuses:
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} still {job.get('status')} after {timeout} s: {job}")


async def eventually(
    check: Callable[[], bool | Awaitable[bool]], timeout: float = 20.0, what: str = "condition"
) -> None:
    """Wait, by the clock, until ``check`` holds: never by a count of samples,
    so a slower machine only makes the wait longer, not the test wrong."""
    deadline = time.monotonic() + timeout
    while True:
        outcome = check()
        if inspect.isawaitable(outcome):
            outcome = await outcome
        if outcome:
            return
        assert time.monotonic() < deadline, f"{what} not reached in {timeout} s"
        await asyncio.sleep(0.05)


async def submit(
    client: TestClient,  # type: ignore[type-arg]
    slug: str,
    payload: dict[str, Any],
    **kwargs: Any,
) -> str:
    resp = await client.post(f"/api/v1/{slug}/jobs", json=payload, **kwargs)
    assert resp.status == 202, await resp.text()
    body = await resp.json()
    return str(body["job_id"])
