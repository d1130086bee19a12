"""Worker memory: RSS with jobs queued and in flight, growth over many jobs, face_mask peak.

Run: ``.venv/bin/python bench/memory.py`` (full: 10,000 jobs, about 10 min on
2 cores) or ``--quick`` (2,000 jobs, about 4 min; what ``make bench`` runs).

Our worker runs in its own process (``bench.dispatch.worker_process``) against
a moto server in another; RSS is that worker process's alone.

1. **Queued and in flight**: ``max_in_flight`` 50; 50 jobs that hold until
   released, then 1,000 more that wait in SQS. RSS then, against idle.
2. **Growth**: a fresh worker (default 4 in flight) runs no-op jobs in bursts
   of 1,000; RSS after the first 1,000 against after all of them. A leak
   shows as growth; the target is ≤ 10 MB over 10,000.
3. **face_mask peak**: one job on a 4096×4096 input in a fresh process
   (``bench/face_mask.py --peak-rss``), its high-water RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import dispatch


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def _submit_many(url: str, count: int, *, hold: bool, start: int, concurrency: int = 16):
    async with aiohttp.ClientSession(url) as http:
        numbers = iter(range(start, start + count))

        async def submitter() -> None:
            for n in numbers:
                async with http.post("/api/v1/noop/jobs", json={"n": n, "hold": hold}) as resp:
                    resp.raise_for_status()

        await asyncio.gather(*(submitter() for _ in range(concurrency)))


async def _metric(url: str, name: str) -> float:
    """Sum of one Prometheus metric's samples from the worker's /metrics."""
    async with aiohttp.ClientSession(url) as http, http.get("/metrics") as resp:
        text = await resp.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


async def _wait_metric(url: str, name: str, target: float, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while await _metric(url, name) < target:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} did not reach {target}")
        await asyncio.sleep(0.5)


def queued_and_in_flight(endpoint: str, queued: int = 1000, in_flight: int = 50) -> dict[str, Any]:
    with dispatch.worker_process(endpoint, in_flight=in_flight) as (url, pid):
        time.sleep(1.0)
        idle = rss_mb(pid)

        async def fill() -> None:
            await _submit_many(url, in_flight, hold=True, start=0)
            # All held jobs running before the rest are queued behind them.
            await _wait_metric(url, "shortdrama_jobs_in_flight", in_flight)
            await _submit_many(url, queued, hold=False, start=in_flight)

        asyncio.run(fill())
        time.sleep(1.0)
        loaded = rss_mb(pid)
        running = asyncio.run(_metric(url, "shortdrama_jobs_in_flight"))
        os.kill(pid, signal.SIGUSR1)  # release the held jobs; the queue drains
    return {
        "idle_mb": idle,
        "loaded_mb": loaded,
        "queued": queued,
        "in_flight_seen": running,
        "delta_mb": loaded - idle,
    }


def growth(endpoint: str, total: int, step: int = 1000) -> dict[str, Any]:
    samples: list[tuple[int, float]] = []
    with dispatch.worker_process(endpoint) as (url, pid):

        async def drive() -> None:
            done = 0
            while done < total:
                await _submit_many(url, step, hold=False, start=done)
                done += step
                await _wait_metric(url, "shortdrama_jobs_finished_total", done)
                samples.append((done, rss_mb(pid)))

        asyncio.run(drive())
    first = samples[0][1]
    return {
        "jobs": total,
        "rss_after_first_mb": first,
        "rss_after_all_mb": samples[-1][1],
        "growth_mb": samples[-1][1] - first,
        "samples": samples,
    }


def face_mask_peak(side: int = 4096) -> dict[str, Any]:
    script = Path(__file__).with_name("face_mask.py")
    out = subprocess.run(
        [sys.executable, str(script), "--peak-rss", str(side)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def run(jobs: int) -> dict[str, Any]:
    with dispatch.moto_process() as endpoint:
        held = queued_and_in_flight(endpoint)
        grown = growth(endpoint, jobs)
    return {"queued": held, "growth": grown, "face_mask": face_mask_peak()}


def format_table(result: dict[str, Any]) -> str:
    q, g, f = result["queued"], result["growth"], result["face_mask"]
    per_10k = g["growth_mb"] * 10000 / max(1, g["jobs"] - 1000)
    w = 48
    label_loaded = f"worker RSS, {q['queued']:,} queued + {q['in_flight_seen']:.0f} in flight"
    label_all = f"worker RSS after {g['jobs']:,} no-op jobs"
    lines = [
        f"{'worker RSS idle':<{w}}{q['idle_mb']:8.1f} MB",
        f"{label_loaded:<{w}}{q['loaded_mb']:8.1f} MB  (+{q['delta_mb']:.1f} MB)",
        f"{'worker RSS after the first 1,000 no-op jobs':<{w}}{g['rss_after_first_mb']:8.1f} MB",
        f"{label_all:<{w}}{g['rss_after_all_mb']:8.1f} MB  (growth {g['growth_mb']:+.1f} MB;"
        f" ≈{per_10k:+.1f} MB per 10,000 jobs)",
        f"face_mask 4096² in a fresh process: RSS before {f['rss_before_mb']:.0f} MB, "
        f"peak {f['peak_mb']:.0f} MB (+{f['peak_mb'] - f['rss_before_mb']:.0f} MB)",
        f"target growth ≤10 MB over 10,000 jobs: {'met' if per_10k <= 10 else 'NOT met'}"
        + ("" if g["jobs"] >= 10000 else f" (scaled up from {g['jobs'] - 1000:,} jobs)"),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 jobs instead of 10,000")
    parser.add_argument("--jobs", type=int, help="jobs for the growth run")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    dispatch.quiet_logging()
    jobs = args.jobs or (2000 if args.quick else 10000)
    result = run(jobs)
    print(json.dumps(result, indent=2) if args.json else format_table(result))


if __name__ == "__main__":
    main()
