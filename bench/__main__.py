"""``python -m bench`` (``make bench``): every benchmark, then ``docs/performance.md``.

Each benchmark runs as its own subprocess, one after another, so none shares
memory or a CPU with the next; their printed tables go into the report as
they are, under the machine they ran on and the commands that reproduce them.
About 10 minutes on 2 cores. ``--full`` runs the memory bench's 10,000 jobs
(about 6 minutes more).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "docs" / "performance.md"


def machine() -> str:
    model = "unknown"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{os.cpu_count()} cores (`nproc`), {model}, Python {platform.python_version()} "
        f"({platform.machine()}, {platform.system()} {platform.release()})"
    )


def run(title: str, args: list[str], timeout: int) -> tuple[str, str, float]:
    """Run one benchmark; (title, its output or why it did not run, seconds)."""
    print(f"== {title}: {' '.join(args)}", flush=True)
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
        )
        output = done.stdout.strip()
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-8:])
            output = f"{output}\n(exited {done.returncode})\n{tail}".strip()
    except subprocess.TimeoutExpired:
        output = f"(did not finish within {timeout} s)"
    seconds = time.perf_counter() - started
    print(output, f"\n   ({seconds:.0f} s)\n", sep="", flush=True)
    return title, output, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="memory bench with 10,000 jobs")
    parser.add_argument(
        "--comfyui-url",
        help="also run the GPU duty-cycle bench against this running ComfyUI (its queue empty)",
    )
    parser.add_argument(
        "--rewrite",
        action="store_true",
        help=f"rebuild the report from the last run's figures ({LAST_RUN.name}) and the notes",
    )
    args = parser.parse_args()
    if args.rewrite:
        last = json.loads(LAST_RUN.read_text())
        write_report([tuple(r) for r in last["results"]], last["run"], last["machine"])
        print(f"rewrote {REPORT.relative_to(ROOT)} from {LAST_RUN.relative_to(ROOT)}")
        return
    benches: list[tuple[str, list[str], str, int]] = [
        (
            "Dispatch overhead (sequential, one client, in-process app)",
            ["bench/dispatch.py", "--jobs", "200"],
            "bench/dispatch.py --jobs 200",
            300,
        ),
        (
            "Ours against Celery + kombu SQS: equal guarantees, and defaults; moto, and moto "
            "+ 10 ms per request",
            ["bench/celery_compare.py", "--jobs", "300", "--rounds", "3"],
            "bench/celery_compare.py --jobs 300 --rounds 3",
            1800,
        ),
        (
            "face_mask end to end on the embedded default, 16 submitters, against main before "
            "issue 16 and before its second round",
            ["bench/face_mask_e2e.py", "--jobs", "96"],
            "bench/face_mask_e2e.py --jobs 96",
            600,
        ),
    ]
    if (ROOT / "bench" / "gpu_duty_cycle.py").exists():
        benches.append(
            (
                "GPU duty cycle (simulated ComfyUI), beside the old one-job-at-a-time design",
                ["bench/gpu_duty_cycle.py"],
                "bench/gpu_duty_cycle.py",
                300,
            )
        )
    if args.comfyui_url:
        real = ["bench/gpu_duty_cycle.py", "--comfyui-url", args.comfyui_url]
        real += ["--jobs", "12", "--exec-s", "1.5", "--queue-ahead", "0,1", "--rounds", "3"]
        benches.append(
            (
                "GPU duty cycle against a real ComfyUI: the physical limit, ours with "
                "queue_ahead 0 and 1",
                real,
                " ".join(real),
                900,
            )
        )
    memory = ["bench/memory.py"] + ([] if args.full else ["--quick"])
    benches += [
        ("Memory", memory, " ".join(memory), 900 if args.full else 500),
        (
            "Peak RSS: 8 concurrent inputs at the pixel limit, with and without the pixel budget",
            ["bench/pixel_budget.py"],
            "bench/pixel_budget.py",
            400,
        ),
        (
            "face_mask image work by stage",
            ["bench/face_mask.py"],
            "bench/face_mask.py",
            300,
        ),
        (
            "Emotion plugin: p50 per reading, one-call analysis jobs/s",
            ["bench/emotion.py"],
            "bench/emotion.py",
            300,
        ),
        (
            "Content Credentials (C2PA) per 1024² result: signing time and bytes added",
            ["bench/c2pa_signing.py"],
            "bench/c2pa_signing.py",
            300,
        ),
        (
            "Per-key limits on a submit, and a reused request, beside the baseline",
            ["bench/limits_reuse.py"],
            "bench/limits_reuse.py",
            300,
        ),
        (
            "Profile of the dispatch hot path (pyinstrument, worker process)",
            ["bench/profile_dispatch.py", "--lines", "60"],
            "bench/profile_dispatch.py",
            300,
        ),
    ]
    results = [(*run(title, argv, timeout), cmd) for title, argv, cmd, timeout in benches]
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    run_facts = {"run": today, "machine": machine(), "results": results}
    LAST_RUN.write_text(json.dumps(run_facts, indent=1, ensure_ascii=False) + "\n")
    write_report(results, today, machine())
    print(f"wrote {REPORT.relative_to(ROOT)}")


NOTES = Path(__file__).with_name("performance_notes.md")
LAST_RUN = Path(__file__).with_name("last_run.json")


def write_report(results: list[tuple[str, str, float, str]], today: str, host: str) -> None:
    parts = [
        "# Performance",
        "",
        "Generated by `make bench` (`.venv/bin/python -m bench`); do not edit the figures by "
        "hand: rerun it. The analysis below the figures is kept in `bench/performance_notes.md`.",
        "",
        f"- Run: {today}",
        f"- Machine: {host}. The cores are shared with other work, so absolute "
        "numbers are noisy; every comparison runs side by side in one invocation and is "
        "reported as a ratio.",
        "- AWS: a moto server in its own process on 127.0.0.1 (no network, but it closes the "
        "TCP connection after every response, so every call pays a connect, for both systems).",
        "",
        "## Reproduce",
        "",
        "```sh",
        ".venv/bin/pip install -r bench/requirements.txt  # bench only: Celery, pycurl, profiler",
        "make bench  # the package and its test extras, then every bench; writes this file",
        "```",
        "",
        "Each section names its own command; `python -m bench --full` runs the memory bench "
        "with 10,000 jobs instead of 2,000; `--comfyui-url URL` adds the GPU duty cycle against "
        "a running ComfyUI (see `docs/comfyui.md`); `--rewrite` rebuilds this file from the last "
        "run's figures (`bench/last_run.json`) and the notes, without running anything.",
        "",
    ]
    for title, output, seconds, cmd in results:
        parts += [
            f"## {title}",
            "",
            f"`.venv/bin/python {cmd}` ({seconds:.0f} s)",
            "",
            "```",
            output,
            "```",
            "",
        ]
    if NOTES.exists():
        parts += [NOTES.read_text().strip(), ""]
    REPORT.write_text("\n".join(parts))


if __name__ == "__main__":
    main()
