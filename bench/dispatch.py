"""Dispatch overhead: what the worker adds on top of the AWS calls it must make.

Run: ``.venv/bin/python bench/dispatch.py [--jobs N]``.

A moto server runs in its own process (so it does not share our GIL). One
application with a no-op handler serves it. For N jobs submitted one at a
time it measures submit → handler start and handler end → completed visible
to a client; in the same run it times the bare AWS calls of the minimal path
(PutItem + SendMessage; ReceiveMessage + GetItem + UpdateItem; UpdateItem +
DeleteMessage) and prints our overhead beyond them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp  # noqa: E402
from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

from shortdrama_worker.app import create_app  # noqa: E402
from shortdrama_worker.aws import open_clients  # noqa: E402
from shortdrama_worker.handlers.base import Handler, HandlerInput, JobContext  # noqa: E402
from shortdrama_worker.plugins import HandlerRegistry  # noqa: E402
from shortdrama_worker.settings import Settings, load_settings  # noqa: E402


class NoopInput(HandlerInput):
    n: int = 0


class NoopHandler(Handler):
    resource = "cpu"
    input_model = NoopInput

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.marks: dict[int, tuple[float, float]] = {}

    async def run(self, params: NoopInput, ctx: JobContext) -> dict[str, Any]:
        start = time.perf_counter()
        self.marks[params.n] = (start, time.perf_counter())
        return {}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@asynccontextmanager
async def moto_process() -> Any:
    port = 20000 + os.getpid() % 20000
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            try:
                async with http.get(f"{url}/moto-api/"):
                    break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait()


def bench_settings(endpoint: str) -> Settings:
    suffix = uuid.uuid4().hex[:8]
    return load_settings(
        None,
        aws={"endpoint_url": endpoint},
        queues={"gpu_queue": f"g{suffix}", "cpu_queue": f"c{suffix}", "wait_time_s": 20},
        store={"table": f"t{suffix}"},
        results={"bucket": f"b{suffix}"},
        local={"provision": True},
        consumer={"consume": ["cpu"], "progress_min_interval_s": 1.0},
    )


async def raw_calls(settings: Settings, endpoint: str, rounds: int) -> dict[str, float]:
    """Median latency of each AWS call on the minimal path, against the same endpoint."""
    timings: dict[str, list[float]] = {}

    def mark(name: str, started: float) -> None:
        timings.setdefault(name, []).append(time.perf_counter() - started)

    async with open_clients(settings.aws, endpoint) as aws:
        url = (await aws.sqs.get_queue_url(QueueName=settings.queues.cpu_queue + "_raw"))["QueueUrl"]
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
    async with moto_process() as endpoint:
        settings = bench_settings(endpoint)
        registry = HandlerRegistry.from_classes({"noop": NoopHandler})
        app = create_app(settings, registry=registry)
        client = TestClient(TestServer(app))
        await client.start_server()
        try:
            async with open_clients(settings.aws, endpoint) as aws:
                await aws.sqs.create_queue(QueueName=settings.queues.cpu_queue + "_raw")
            handler = next(iter(app[__import__("shortdrama_worker.keys").keys.HANDLERS].values()))
            assert isinstance(handler, NoopHandler)
            submit_lat, to_start, to_visible, total = [], [], [], []
            for n in range(jobs):
                t0 = time.perf_counter()
                resp = await client.post("/api/v1/noop/jobs", json={"n": n})
                t1 = time.perf_counter()
                job_id = (await resp.json())["job_id"]
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
        finally:
            await client.close()
    # The minimal path: submit (Put+Send), dispatch (Receive+Get+Update), finish (Update+Delete).
    floor_start = raw["PutItem"] + raw["SendMessage"] + raw["ReceiveMessage"] + raw["GetItem"] + raw["UpdateItem"]
    floor_end = raw["UpdateItem"] + raw["DeleteMessage"]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(run(args.jobs))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"dispatch overhead — {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, moto server in its own process")
    print(f"  jobs (sequential, no-op handler): {result['jobs']}")
    print(f"  POST → 202                 p50 {result['submit_p50_ms']:7.2f} ms")
    print(f"  submit → handler start     p50 {result['submit_to_start_p50_ms']:7.2f} ms   "
          f"p99 {result['submit_to_start_p99_ms']:7.2f} ms   "
          f"(bare AWS calls: {result['floor_submit_to_start_ms']:.2f} ms)")
    print(f"  handler end → completed    p50 {result['end_to_visible_p50_ms']:7.2f} ms   "
          f"p99 {result['end_to_visible_p99_ms']:7.2f} ms   "
          f"(bare AWS calls: {result['floor_end_to_visible_ms']:.2f} ms; includes client poll)")
    print(f"  overhead beyond the endpoint: start {result['overhead_start_p50_ms']:.2f} ms, "
          f"end {result['overhead_end_p50_ms']:.2f} ms (p50)")
    print(f"  bare call medians (ms): {result['raw_calls_ms']}")


if __name__ == "__main__":
    main()
