"""What per-key limits add to a submit, and what a reused request saves.

Run: ``.venv/bin/python bench/limits_reuse.py [--jobs N] [--rounds R]``.

A moto server runs in its own process. Two applications on it, consumers off:
one without limits (the baseline), one with a rate, a concurrency limit and a
daily quota on the anonymous key, all high enough never to refuse. Submits go
to them alternately, one at a time, and the latency of each is timed; the
difference is the limits' conditional DynamoDB writes (three per submit).

Then, with consumers on: ``face_mask`` on a 1024² frame (the local detector,
real CPU work) and ``face_swap`` against the fake ARK server of the tests
(priced at $0.03 an image; the fake answers at once, where Seedream takes
seconds, so its time saving is a lower bound), each submitted once and then
repeated ``R`` times with ``Prefer: wait``: time to the finished job, and the
estimated cost of each.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the fake ARK server speaks the real protocol

from fakes.ark import FakeArk  # noqa: E402
from PIL import Image  # noqa: E402

from bench.dispatch import (  # noqa: E402
    bench_settings,
    moto_process,
    pct,
    quiet_logging,
    running_app,
)
from shortdrama_worker.handlers.face_mask import FaceMaskHandler  # noqa: E402
from shortdrama_worker.handlers.face_swap import FaceSwapHandler  # noqa: E402
from shortdrama_worker.settings import Settings  # noqa: E402

EXAMPLE = ROOT / "examples" / "face.png"
NEVER_REFUSE = {
    "rate": 1_000_000,
    "rate_window_s": 86400,
    "concurrency": 1000,
    "jobs_per_day": 10**9,
}


def with_sections(settings: Settings, **sections: Any) -> Settings:
    data = settings.model_dump()
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return Settings.model_validate(data)


async def submit_overhead(endpoint: str, jobs: int) -> dict[str, Any]:
    base = bench_settings(endpoint)
    plain = with_sections(base, consumer={"enabled": False})
    limited = with_sections(plain, limits={"default": NEVER_REFUSE})
    timings: dict[str, list[float]] = {"off": [], "on": []}
    async with running_app(plain) as (off, _), running_app(limited) as (on, _):
        for client in (off, on):  # warm connections and the counter items
            for _ in range(5):
                (await client.post("/api/v1/noop/jobs", json={})).release()
        for i in range(jobs):
            for name, client in (("off", off), ("on", on)) if i % 2 else (("on", on), ("off", off)):
                started = time.perf_counter()
                resp = await client.post("/api/v1/noop/jobs", json={"n": i})
                assert resp.status == 202, await resp.text()
                resp.release()
                timings[name].append(time.perf_counter() - started)
    return {
        name: {"median_ms": statistics.median(v) * 1000, "p95_ms": pct(v, 0.95) * 1000}
        for name, v in timings.items()
    }


def frame_uri(side: int) -> str:
    image = Image.open(EXAMPLE).convert("RGB").resize((side, side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


async def timed_job(
    client: Any, slug: str, payload: dict[str, Any]
) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    resp = await client.post(f"/api/v1/{slug}/jobs", json=payload, headers={"Prefer": "wait=120"})
    job: dict[str, Any] = await resp.json()
    elapsed = time.perf_counter() - started
    assert resp.status == 200 and job["status"] == "completed", job
    return elapsed, job


async def reuse_saving(endpoint: str, rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with FakeArk() as ark:
        settings = with_sections(
            bench_settings(endpoint),
            handlers={
                "options": {
                    "face_swap": {
                        "ark": {
                            "base_url": ark.base_url,
                            "api_key": ark.api_key,
                            "requests_per_minute": 0,
                        }
                    }
                }
            },
            costs={"prices": {"ark": {"generated_images": 0.03}}},
        )
        handlers = {"face_mask": FaceMaskHandler, "face_swap": FaceSwapHandler}
        async with running_app(settings, handlers) as (client, _):
            frame = frame_uri(1024)
            cases = {
                "face_mask 1024²": ("face-mask", {"image_url": frame}),
                "face_swap (fake ARK)": (
                    "face-swap",
                    {
                        "masked_image": frame_uri(1280),
                        "target_face": frame_uri(256),
                        "target_face_consent": {"release_form": "RF-1", "attested_by": "bench"},
                        "reuse": True,
                    },
                ),
            }
            for name, (slug, payload) in cases.items():
                first_s, first = await timed_job(client, slug, payload)
                again: list[float] = []
                for _ in range(rounds):
                    seconds, job = await timed_job(client, slug, payload)
                    assert job["reused_from"] == first["job_id"], job
                    again.append(seconds)
                out[name] = {
                    "first_s": first_s,
                    "reused_median_s": statistics.median(again),
                    "first_cost": first["cost"]["total"],
                    "reused_cost": job["cost"]["total"],
                    "saved_per_repeat": job["cost"]["saved"],
                    "provider_calls": len(ark.requests) if slug == "face-swap" else None,
                }
    return out


async def main(jobs: int, rounds: int) -> None:
    quiet_logging()
    with moto_process() as endpoint:
        overhead = await submit_overhead(endpoint, jobs)
        saving = await reuse_saving(endpoint, rounds)
    off, on = overhead["off"], overhead["on"]
    print(f"Submit latency, {jobs} submits each, interleaved (consumers off):")
    print(f"  {'':24}{'median ms':>10}{'p95 ms':>10}")
    print(f"  {'limits off (baseline)':24}{off['median_ms']:>10.2f}{off['p95_ms']:>10.2f}")
    print(f"  {'limits on':24}{on['median_ms']:>10.2f}{on['p95_ms']:>10.2f}")
    print(
        f"  on/off: median x{on['median_ms'] / off['median_ms']:.2f}, "
        f"+{on['median_ms'] - off['median_ms']:.2f} ms a submit "
        "(rate window, concurrency map, daily quota: three conditional writes)"
    )
    print()
    print(f"A repeated request answered from the first result ({rounds} repeats, Prefer: wait):")
    for name, s in saving.items():
        calls = f", provider calls {s['provider_calls']}" if s["provider_calls"] is not None else ""
        print(
            f"  {name}: first {s['first_s'] * 1000:.0f} ms, repeat median "
            f"{s['reused_median_s'] * 1000:.0f} ms (x{s['reused_median_s'] / s['first_s']:.2f}); "
            f"cost first ${s['first_cost']:.3f}, repeat ${s['reused_cost']:.3f} "
            f"(saved ${s['saved_per_repeat']:.3f} each){calls}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.jobs, args.rounds))
