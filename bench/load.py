"""Load: many concurrent submitters for a fixed time against one instance.

Run: ``.venv/bin/python bench/load.py [--duration 60] [--submitters 32]``.

Loopback only: a moto server in its own process (so it does not share our GIL)
and one application with a no-op handler that counts its runs per job id.
Submitters POST jobs until the time is up (or ``--max-jobs`` were accepted);
then the run waits for every accepted job to complete and checks the promise:
zero lost (every accepted job is ``completed``, its handler ran), zero
duplicated (no handler ran twice for one job id, no message left in the queue
that could run it again). It prints p50/p99 submit latency and completed jobs
per second. ``tests/test_load.py`` runs the same driver for ~10 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from shortdrama_worker import keys
from shortdrama_worker.app import create_app
from shortdrama_worker.contract import (
    CONTRACT_VERSION,
    Handler,
    HandlerInput,
    JobContext,
    NoSettings,
)
from shortdrama_worker.logconfig import configure_logging
from shortdrama_worker.plugins import HandlerRegistry
from shortdrama_worker.settings import Settings, load_settings


class NoopInput(HandlerInput):
    submitter: int = 0
    n: int = 0


class CountingNoopHandler(Handler[Any, NoSettings]):
    """Does nothing, fast; counts how often it ran for each job id."""

    contract_version = CONTRACT_VERSION

    resource = "cpu"
    input_model = NoopInput
    timeout_s = 30.0
    description = "load-test no-op"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.runs: Counter[str] = Counter()
        self.ran = asyncio.Event()

    async def run(self, params: NoopInput, ctx: JobContext) -> dict[str, Any]:
        self.runs[ctx.job_id] += 1
        self.ran.set()
        return {"submitter": params.submitter, "n": params.n}

    async def wait_until_all_ran(self, job_ids: list[str], timeout_s: float) -> None:
        """Return once every job in ``job_ids`` ran at least once, or after ``timeout_s``."""
        waiting = {j for j in job_ids if not self.runs[j]}
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while waiting:
                    self.ran.clear()
                    waiting = {j for j in waiting if not self.runs[j]}
                    if waiting:
                        await self.ran.wait()


def registry() -> HandlerRegistry:
    return HandlerRegistry.from_classes({"noop": CountingNoopHandler})


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


@dataclass
class LoadReport:
    submitters: int
    duration_s: float
    accepted: int = 0
    refused: dict[int, int] = field(default_factory=dict)
    submit_p50_ms: float = 0.0
    submit_p99_ms: float = 0.0
    submit_max_ms: float = 0.0
    completed: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: dict[str, int] = field(default_factory=dict)
    not_completed: dict[str, str] = field(default_factory=dict)
    messages_left: int = 0
    all_done_s: float = 0.0
    completed_per_s: float = 0.0

    def lines(self) -> list[str]:
        return [
            f"  submitters {self.submitters} for {self.duration_s:.1f} s: "
            f"{self.accepted} accepted ({self.accepted / self.duration_s:.1f}/s), "
            f"refused {self.refused or 'none'}",
            f"  POST → 202   p50 {self.submit_p50_ms:7.2f} ms   p99 {self.submit_p99_ms:7.2f} ms"
            f"   max {self.submit_max_ms:7.2f} ms",
            f"  completed {self.completed} of {self.accepted}; all done "
            f"{self.all_done_s:.2f} s after the first submit → "
            f"{self.completed_per_s:.1f} completed jobs/s",
            f"  lost {len(self.lost)}, duplicated {len(self.duplicated)}, "
            f"not completed {len(self.not_completed)}, messages left in the queue "
            f"{self.messages_left}",
        ]


async def run_load(
    app: web.Application,
    client: TestClient,  # type: ignore[type-arg]
    *,
    submitters: int,
    duration_s: float,
    max_jobs: int,
    settle_timeout_s: float = 60.0,
) -> LoadReport:
    """Submit from ``submitters`` tasks for ``duration_s``, then wait and audit."""
    handler = app[keys.HANDLERS]["noop"]
    assert isinstance(handler, CountingNoopHandler)
    report = LoadReport(submitters=submitters, duration_s=duration_s)
    accepted: list[str] = []
    latencies: list[float] = []
    refused: Counter[int] = Counter()
    started = time.perf_counter()
    deadline = started + duration_s

    async def submitter(index: int) -> None:
        n = 0
        while time.perf_counter() < deadline and len(accepted) < max_jobs:
            t0 = time.perf_counter()
            resp = await client.post("/api/v1/noop/jobs", json={"submitter": index, "n": n})
            body = await resp.json()
            if resp.status == 202:
                latencies.append(time.perf_counter() - t0)
                accepted.append(str(body["job_id"]))
            else:
                refused[resp.status] += 1
            n += 1

    await asyncio.gather(*(submitter(i) for i in range(submitters)))
    report.accepted = len(accepted)
    report.refused = dict(refused)
    report.submit_p50_ms = 1000 * percentile(latencies, 0.50)
    report.submit_p99_ms = 1000 * percentile(latencies, 0.99)
    report.submit_max_ms = 1000 * max(latencies, default=float("nan"))

    # Every accepted job's handler ran, and its record says completed as a
    # client sees it (the consumer writes that just after the run).
    settle_by = time.perf_counter() + settle_timeout_s
    await handler.wait_until_all_ran(accepted, settle_timeout_s)
    statuses = await job_statuses(client, accepted, settle_by)
    report.all_done_s = time.perf_counter() - started
    # A redelivered message would run a job again: give it a moment, then look.
    await asyncio.sleep(1.0)
    report.lost = [j for j in accepted if handler.runs[j] == 0]
    report.duplicated = {j: n for j, n in handler.runs.items() if n > 1}
    report.duplicated.update({j: 0 for j, n in Counter(accepted).items() if n > 1})
    report.not_completed = {j: s for j, s in statuses.items() if s != "completed"}
    report.completed = sum(1 for s in statuses.values() if s == "completed")
    report.completed_per_s = report.completed / report.all_done_s if report.all_done_s else 0.0
    report.messages_left = await messages_in_queue(app)
    return report


async def job_statuses(
    client: TestClient,  # type: ignore[type-arg]
    job_ids: list[str],
    settle_by: float,
) -> dict[str, str]:
    """Each job's status through the API, polled until completed or ``settle_by``."""
    limit = asyncio.Semaphore(16)
    statuses: dict[str, str] = {}

    async def poll(job_id: str) -> None:
        async with limit:
            while True:
                resp = await client.get(f"/api/v1/jobs/{job_id}")
                statuses[job_id] = (await resp.json()).get("status", f"http {resp.status}")
                if statuses[job_id] == "completed" or time.perf_counter() > settle_by:
                    return
                await asyncio.sleep(0.05)

    await asyncio.gather(*(poll(j) for j in job_ids))
    return statuses


async def messages_in_queue(app: web.Application) -> int:
    reply = await app[keys.AWS].sqs.get_queue_attributes(
        QueueUrl=app[keys.QUEUE].url("cpu"),
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )
    return sum(int(v) for v in reply["Attributes"].values())


@asynccontextmanager
async def moto_process() -> AsyncIterator[str]:
    """moto's server in its own process on a free loopback port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(400):
                try:
                    async with http.get(f"{url}/moto-api/"):
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        await proc.wait()


def load_settings_for(endpoint: str, in_flight: int) -> Settings:
    suffix = uuid.uuid4().hex[:8]
    return load_settings(
        None,
        aws={"endpoint_url": endpoint},
        queues={"gpu_queue": f"g{suffix}", "cpu_queue": f"c{suffix}", "wait_time_s": 1},
        store={"table": f"t{suffix}"},
        results={"bucket": f"b{suffix}"},
        local={"provision": True},
        # Image results are signed as on the embedded default (development certificate).
        provenance={"dev_certificate": True, "dev_certificate_dir": _cert_dir()},
        consumer={"consume": ["cpu"], "max_in_flight": {"cpu": in_flight}},
        log={"level": "WARNING"},
    )


async def main_async(args: argparse.Namespace) -> LoadReport:
    async with moto_process() as endpoint:
        settings = load_settings_for(endpoint, args.in_flight)
        configure_logging(settings.log)  # per-job lines would cost more than the jobs
        app = create_app(settings, registry=registry())
        client = TestClient(TestServer(app))
        await client.start_server()
        try:
            return await run_load(
                app,
                client,
                submitters=args.submitters,
                duration_s=args.duration,
                max_jobs=args.max_jobs,
                settle_timeout_s=max(60.0, args.duration),
            )
        finally:
            await client.close()


def _cert_dir() -> str:
    """One development certificate for every bench run (results are signed as in production)."""
    return str(Path(tempfile.gettempdir()) / "shortdrama-bench-dev-certificate")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of submitting")
    parser.add_argument("--submitters", type=int, default=32, help="concurrent submitters")
    parser.add_argument("--max-jobs", type=int, default=100_000, help="stop after this many")
    parser.add_argument("--in-flight", type=int, default=10, help="consumer.max_in_flight.cpu")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = asyncio.run(main_async(args))
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        print(
            f"load — {platform.machine()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}, moto server in its own process, "
            f"consumer in-flight {args.in_flight}"
        )
        print("\n".join(report.lines()))
    ok = not (report.lost or report.duplicated or report.not_completed or report.messages_left)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
