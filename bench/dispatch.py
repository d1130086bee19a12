"""Dispatch overhead: what the worker adds on top of the AWS calls it must make.

Run: ``.venv/bin/python bench/dispatch.py [--jobs N]``.

A moto server runs in its own process (so it does not share our GIL). One
application with a no-op handler serves it. For N jobs submitted one at a
time it measures submit → handler start and handler end → completed visible
to a client polling every millisecond (from the end of the run; polls before
it would only load the endpoint the dispatch is waiting on); in the same run
it times the bare AWS calls of the minimal path (PutItem + SendMessage;
ReceiveMessage + UpdateItem; UpdateItem + the client's GetItem) and prints
our overhead beyond them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
from aiohttp.test_utils import TestClient, TestServer

from shortdrama_worker import keys
from shortdrama_worker.app import create_app
from shortdrama_worker.aws.clients import open_clients
from shortdrama_worker.contract import (
    CONTRACT_VERSION,
    Handler,
    HandlerInput,
    JobContext,
    NoSettings,
)
from shortdrama_worker.logconfig import configure_logging
from shortdrama_worker.plugins import HandlerRegistry
from shortdrama_worker.settings import LogSettings, Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]


class NoopInput(HandlerInput):
    n: int = 0
    hold: bool = False


# Jobs submitted with ``hold`` stay running until the worker gets SIGUSR1: the
# memory bench uses it to keep 50 jobs in flight in a worker subprocess.
RELEASE = asyncio.Event()


class NoopHandler(Handler[Any, NoSettings]):
    contract_version = CONTRACT_VERSION
    resource = "cpu"
    input_model = NoopInput

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.marks: dict[int, tuple[float, float]] = {}
        self.ran = asyncio.Event()  # set as each run ends: the sequential bench waits on it

    async def run(self, params: NoopInput, ctx: JobContext) -> dict[str, Any]:
        start = time.perf_counter()
        if params.hold:
            await RELEASE.wait()
        if params.n >= 0:
            self.marks[params.n] = (start, time.perf_counter())
        self.ran.set()
        return {}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


LAST_MOTO_PID = 0


@contextmanager
def moto_process() -> Iterator[str]:
    """A moto server in its own process, so it does not share the GIL with what it serves."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    global LAST_MOTO_PID
    LAST_MOTO_PID = proc.pid  # the profile bench reads moto's CPU use
    url = f"http://127.0.0.1:{port}"
    for _ in range(400):
        try:
            with urllib.request.urlopen(f"{url}/moto-api/", timeout=1):
                break
        except OSError:
            time.sleep(0.05)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait()


def quiet_logging() -> None:
    """Production logging (JSON, INFO, one line per job) written to /dev/null.

    The cost of rendering each line stays in the measurement, as it would in
    production, without burying the printed table.
    """
    configure_logging(LogSettings(level="INFO", format="json"))
    sink = open(os.devnull, "w")  # noqa: SIM115 — lives as long as the process
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(sink)


def bench_settings(endpoint: str, *, in_flight: int = 4) -> Settings:
    suffix = uuid.uuid4().hex[:8]
    return load_settings(
        None,
        aws={"endpoint_url": endpoint},
        queues={"gpu_queue": f"g{suffix}", "cpu_queue": f"c{suffix}", "wait_time_s": 20},
        store={"table": f"t{suffix}"},
        results={"bucket": f"b{suffix}"},
        local={"provision": True},
        # Image results are signed as on the embedded default (development certificate).
        provenance={"dev_certificate": True, "dev_certificate_dir": _cert_dir()},
        consumer={
            "consume": ["cpu"],
            "progress_min_interval_s": 1.0,
            "max_in_flight": {"gpu": 1, "cpu": in_flight},
        },
    )


@asynccontextmanager
async def running_app(
    settings: Settings, handlers: dict[str, type[Handler]] | None = None
) -> AsyncIterator[tuple[TestClient[Any, Any], Any]]:
    """The real application (API + consumer) on a loopback port, and a client for it."""
    registry = HandlerRegistry.from_classes(handlers or {"noop": NoopHandler})
    app = create_app(settings, registry=registry)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client, app
    finally:
        await client.close()


async def raw_calls(settings: Settings, endpoint: str, rounds: int) -> dict[str, float]:
    """Median latency of each AWS call on the minimal path, against the same endpoint."""
    timings: dict[str, list[float]] = {}

    def mark(name: str, started: float) -> None:
        timings.setdefault(name, []).append(time.perf_counter() - started)

    async with open_clients(settings.aws, endpoint) as aws:
        url = (await aws.sqs.get_queue_url(QueueName=settings.queues.cpu_queue + "_raw"))[
            "QueueUrl"
        ]
        table = settings.store.table
        for i in range(rounds):
            key = {"task_id": {"S": f"raw-{i}"}}
            t = time.perf_counter()
            await aws.dynamodb.put_item(
                TableName=table,
                Item={**key, "status": {"S": "pending"}, "created_at": {"N": "1"}},
                ConditionExpression="attribute_not_exists(task_id)",
            )
            mark("PutItem", t)
            t = time.perf_counter()
            await aws.sqs.send_message(QueueUrl=url, MessageBody="{}")
            mark("SendMessage", t)
            t = time.perf_counter()
            reply = await aws.sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1)
            mark("ReceiveMessage", t)
            t = time.perf_counter()
            await aws.dynamodb.get_item(TableName=table, Key=key, ConsistentRead=True)
            mark("GetItem", t)
            for _ in range(2):  # claim and complete
                t = time.perf_counter()
                await aws.dynamodb.update_item(
                    TableName=table,
                    Key=key,
                    UpdateExpression="SET #s = :p",
                    ConditionExpression="attribute_exists(task_id)",
                    ExpressionAttributeNames={"#s": "status"},
                    ExpressionAttributeValues={":p": {"S": "processing"}},
                )
                mark("UpdateItem", t)
            t = time.perf_counter()
            await aws.sqs.delete_message(
                QueueUrl=url, ReceiptHandle=reply["Messages"][0]["ReceiptHandle"]
            )
            mark("DeleteMessage", t)
    return {name: statistics.median(values) for name, values in timings.items()}


async def run(jobs: int) -> dict[str, Any]:
    with moto_process() as endpoint:
        settings = bench_settings(endpoint)
        async with running_app(settings) as (client, app):
            async with open_clients(settings.aws, endpoint) as aws:
                await aws.sqs.create_queue(QueueName=settings.queues.cpu_queue + "_raw")
            handler = app[keys.HANDLERS]["noop"]
            assert isinstance(handler, NoopHandler)
            submit_lat, to_start, to_visible, total = [], [], [], []
            for n in range(jobs):
                handler.ran.clear()
                t0 = time.perf_counter()
                resp = await client.post("/api/v1/noop/jobs", json={"n": n})
                t1 = time.perf_counter()
                job_id = (await resp.json())["job_id"]
                # The client starts polling once the handler has run, so that
                # its 1-ms polls (each a GetItem on the same endpoint) do not
                # slow down the dispatch they are meant to observe.
                await asyncio.wait_for(handler.ran.wait(), 30)
                while True:
                    job = await (await client.get(f"/api/v1/jobs/{job_id}")).json()
                    if job["status"] == "completed":
                        break
                    await asyncio.sleep(0.001)
                t4 = time.perf_counter()
                start, end = handler.marks[n]
                submit_lat.append(t1 - t0)
                to_start.append(start - t0)
                to_visible.append(t4 - end)
                total.append(t4 - t0)
            raw = await raw_calls(settings, endpoint, rounds=max(20, jobs // 5))
    # The minimal path: submit (Put+Send), dispatch (Receive+Update: the runner
    # claims first and reads only when refused, so no GetItem), finish (the
    # completion Update, then the client's GetItem that sees it; the message
    # is deleted after the completion, off this path).
    floor_start = raw["PutItem"] + raw["SendMessage"] + raw["ReceiveMessage"] + raw["UpdateItem"]
    floor_end = raw["UpdateItem"] + raw["GetItem"]
    return {
        "jobs": jobs,
        "submit_p50_ms": 1000 * pct(submit_lat, 0.5),
        "submit_to_start_p50_ms": 1000 * pct(to_start, 0.5),
        "submit_to_start_p99_ms": 1000 * pct(to_start, 0.99),
        "end_to_visible_p50_ms": 1000 * pct(to_visible, 0.5),
        "end_to_visible_p99_ms": 1000 * pct(to_visible, 0.99),
        "round_trip_p50_ms": 1000 * pct(total, 0.5),
        "raw_calls_ms": {k: round(1000 * v, 2) for k, v in raw.items()},
        "floor_submit_to_start_ms": 1000 * floor_start,
        "floor_end_to_visible_ms": 1000 * floor_end,
        "overhead_start_p50_ms": 1000 * (pct(to_start, 0.5) - floor_start),
        "overhead_end_p50_ms": 1000 * (pct(to_visible, 0.5) - floor_end),
    }


def summarise(name: str, latencies: list[float], wall_s: float) -> dict[str, Any]:
    """p50/p99 of submit → completed (as a client sees it) and completed jobs per second."""
    return {
        "name": name,
        "jobs": len(latencies),
        "p50_ms": 1000 * pct(latencies, 0.5),
        "p99_ms": 1000 * pct(latencies, 0.99),
        "jobs_per_s": len(latencies) / wall_s,
        "wall_s": wall_s,
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def worker_process(
    endpoint: str, *, in_flight: int = 4, env: dict[str, str] | None = None
) -> Iterator[tuple[str, int]]:
    """Our daemon (API + consumer, no-op handler) in its own process; yields (base URL, pid).

    A process of its own, as in production: the load generator's CPU is not
    charged to the worker, just as Celery's client runs outside Celery's worker.
    """
    port = free_port()
    cmd = [sys.executable, "-m", "bench.dispatch", "--serve", endpoint, "--port", str(port),
           "--in-flight", str(in_flight)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(f"{url}/ready", timeout=1):
                    break
            except OSError:
                time.sleep(0.05)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait()


# Set to a path, the ``--serve`` worker profiles itself with pyinstrument
# (statistical, ~1 ms interval) and writes the text report there on exit.
PROFILE_ENV = "BENCH_PROFILE"


def _profiled(out: Path) -> Any:
    async def ctx(_app: Any) -> AsyncIterator[None]:
        from pyinstrument import Profiler

        # async_mode off: we want where the event loop's CPU goes, across all
        # tasks, not one coroutine's wall time.
        profiler = Profiler(interval=0.001, async_mode="disabled")
        profiler.start()
        yield
        profiler.stop()
        # The worker is shutting down; blocking here is harmless.
        out.write_text(profiler.output_text(unicode=True, show_all=False))  # noqa: ASYNC240

    return ctx


def serve(endpoint: str, port: int, in_flight: int) -> None:
    """The ``--serve`` mode behind ``worker_process``."""
    from aiohttp import web

    quiet_logging()
    settings = bench_settings(endpoint, in_flight=in_flight)
    app = create_app(settings, registry=HandlerRegistry.from_classes({"noop": NoopHandler}))

    async def on_startup(_app: web.Application) -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, RELEASE.set)

    app.on_startup.append(on_startup)
    profile_to = os.environ.get(PROFILE_ENV)
    if profile_to:
        app.cleanup_ctx.insert(0, _profiled(Path(profile_to)))
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


async def run_concurrent(
    base_url: str,
    jobs: int,
    *,
    submitters: int,
    poll_s: float,
    warmup: int = 10,
    name: str = "shortdrama-worker",
) -> dict[str, Any]:
    """``jobs`` no-op jobs from ``submitters`` concurrent clients, each polling every ``poll_s``.

    Each submitter posts a job, polls ``GET /api/v1/jobs/{id}`` until it reads
    ``completed``, then takes the next. Jobs/s is jobs ÷ (first submit → last
    completion seen). A negative ``poll_s`` waits the way a client of ours
    would: ``Prefer: wait`` on the submit (and on a GET, if the wait ran out).
    """
    waits = poll_s < 0
    prefer = {"Prefer": "wait=30"} if waits else {}
    async with aiohttp.ClientSession(base_url) as http:

        async def one(n: int) -> float:
            t0 = time.perf_counter()
            async with http.post("/api/v1/noop/jobs", json={"n": n}, headers=prefer) as resp:
                job = await resp.json()
            while job["status"] != "completed":
                if not waits:
                    await asyncio.sleep(poll_s)
                async with http.get(f"/api/v1/jobs/{job['job_id']}", headers=prefer) as resp:
                    job = await resp.json()
            return time.perf_counter() - t0

        # Warm-up: first-use costs (botocore loaders, connection pools) are not dispatch.
        await asyncio.gather(*(one(-1 - i) for i in range(warmup)))
        latencies: list[float] = []
        pending = iter(range(jobs))

        async def submitter() -> None:
            for n in pending:
                latencies.append(await one(n))

        started = time.perf_counter()
        await asyncio.gather(*(submitter() for _ in range(submitters)))
        wall = time.perf_counter() - started
    return summarise(name, latencies, wall)


async def run_burst(
    base_url: str, jobs: int, *, submitters: int, name: str = "shortdrama-worker"
) -> dict[str, Any]:
    """Throughput: ``submitters`` clients submit ``jobs`` jobs at once, then wait for all.

    Completion time is the record's own ``updated_at`` (set when the job is
    completed), not when a client happened to poll: polls here would be
    DynamoDB reads on the same endpoint and would throttle what they measure.
    Each job is polled only after those before it completed, every 100 ms.
    """
    async with aiohttp.ClientSession(base_url) as http:

        async def submit(n: int) -> tuple[str, float]:
            t0 = time.time()
            async with http.post("/api/v1/noop/jobs", json={"n": n}) as resp:
                return (await resp.json())["job_id"], t0

        async def done_at(job_id: str) -> float:
            while True:
                async with http.get(f"/api/v1/jobs/{job_id}") as resp:
                    job = await resp.json()
                if job["status"] == "completed":
                    return float(job["updated_at"])
                await asyncio.sleep(0.1)

        # Warm-up, as in run_concurrent.
        for job_id, _ in await asyncio.gather(*(submit(-1 - i) for i in range(submitters))):
            await done_at(job_id)
        pending = iter(range(jobs))
        submitted: list[tuple[str, float]] = []

        async def submitter() -> None:
            for n in pending:
                submitted.append(await submit(n))

        await asyncio.gather(*(submitter() for _ in range(submitters)))
        finished = [await done_at(job_id) for job_id, _ in submitted]
    return summarise_burst(name, [t for _, t in submitted], finished)


def summarise_burst(name: str, submitted: list[float], finished: list[float]) -> dict[str, Any]:
    """A burst's jobs/s (first submit → last completion) and submit → completed latencies."""
    summary = summarise(
        name, [b - a for a, b in zip(submitted, finished, strict=True)],
        max(finished) - min(submitted),
    )  # fmt: skip
    return summary


def _cert_dir() -> str:
    """One development certificate for every bench run (results are signed as in production)."""
    return str(Path(tempfile.gettempdir()) / "shortdrama-bench-dev-certificate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve", metavar="ENDPOINT", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--in-flight", type=int, default=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.in_flight)
        return
    quiet_logging()
    result = asyncio.run(run(args.jobs))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"dispatch overhead — {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, moto server in its own process"
    )
    print(f"  jobs (sequential, no-op handler): {result['jobs']}")
    print(f"  POST → 202                 p50 {result['submit_p50_ms']:7.2f} ms")
    print(
        f"  submit → handler start     p50 {result['submit_to_start_p50_ms']:7.2f} ms   "
        f"p99 {result['submit_to_start_p99_ms']:7.2f} ms   "
        f"(bare AWS calls: {result['floor_submit_to_start_ms']:.2f} ms)"
    )
    print(
        f"  handler end → completed    p50 {result['end_to_visible_p50_ms']:7.2f} ms   "
        f"p99 {result['end_to_visible_p99_ms']:7.2f} ms   "
        f"(bare AWS calls: {result['floor_end_to_visible_ms']:.2f} ms, UpdateItem + GetItem)"
    )
    print(
        f"  overhead beyond the endpoint: start {result['overhead_start_p50_ms']:.2f} ms, "
        f"end {result['overhead_end_p50_ms']:.2f} ms (p50)"
    )
    print(f"  bare call medians (ms): {result['raw_calls_ms']}")


if __name__ == "__main__":
    main()
