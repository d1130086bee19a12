"""face_mask end to end on the embedded default, against the code before a given commit.

Run: ``.venv/bin/python bench/face_mask_e2e.py [--jobs 96] [--submitters 16]``.

The daemon is started exactly as ``make run`` starts it (``config/local.toml``:
moto embedded in the daemon, journaled to a state directory, the local
detector), on free ports and a fresh state directory, in its own process. 16
submitters (in this process) post ``examples/face.png`` as a ``data:`` URI with
``Prefer: wait=60`` and wait for the result, one job after another each. Every
request's PNG differs in one ``tEXt`` chunk (same pixels), so the result reuse
cache answers none of them. The
same run is made against the baseline: the package as it was at
``--baseline-ref`` (``git archive`` into a temporary folder, put first on
``PYTHONPATH``), so both figures come from the same machine in the same minute.

It prints completed jobs/s, submit→done p50/p99 and the daemon's CPU per job
(its own process and any children), and ours/baseline. ``--profile`` records
the daemon under ``py-spy`` (every thread, idle frames dropped) for each
variant and prints the top functions.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
# main before issue 16 (the figures of the issue were measured on it), and main
# before its second round (Content Credentials, reuse and limits had landed).
DEFAULT_BASELINES = ("0e2a810", "bb28d15")


@dataclass
class Outcome:
    label: str
    jobs: int
    failed: int
    wall_s: float
    latencies: list[float]
    cpu_s: float

    @property
    def rate(self) -> float:
        return self.jobs / self.wall_s

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its live children (a process pool, if any)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid]
    with contextlib.suppress(OSError):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    for one in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def baseline_tree(ref: str, into: Path) -> Path | None:
    """The package as it was at ``ref``, or ``None`` if this checkout lacks it."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "shortdrama_worker"],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        return None
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


@contextlib.contextmanager
def daemon(
    pythonpath: Path | None, workdir: Path, profile: Path | None
) -> Iterator[tuple[str, int]]:
    api_port, aws_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SHORTDRAMA_")},
        "SHORTDRAMA_API__PORT": str(api_port),
        "SHORTDRAMA_LOCAL__EMBEDDED_AWS_PORT": str(aws_port),
        "SHORTDRAMA_LOCAL__STATE_DIR": str(workdir / "state"),
        "SHORTDRAMA_LOG__FORMAT": "json",
        "SHORTDRAMA_LOG__LEVEL": "WARNING",
    }
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    argv = [sys.executable, "-m", "shortdrama_worker", "--config", "config/local.toml", "serve"]
    if profile is not None:
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        argv = [spy, "record", "--threads", "--gil", "--subprocesses", "-r", "100", "-f", "raw",
                "-o", str(profile), "--", *argv]  # fmt: skip
    log = (workdir / "daemon.log").open("w")
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{api_port}", proc.pid
    finally:
        proc.send_signal(signal.SIGINT if profile is not None else signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        if proc.returncode not in (0, -signal.SIGTERM, -signal.SIGINT):
            tail = (workdir / "daemon.log").read_text().splitlines()[-15:]
            print(f"daemon exited {proc.returncode}:", *tail, sep="\n", file=sys.stderr)


def worker_pid(proc_pid: int, profiled: bool) -> int:
    """The daemon's pid (under py-spy, its child)."""
    if not profiled:
        return proc_pid
    children = Path(f"/proc/{proc_pid}/task/{proc_pid}/children").read_text().split()
    return int(children[0])


async def wait_ready(http: aiohttp.ClientSession, api: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(f"{api}/ready") as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"daemon at {api} not ready in {timeout_s} s")


async def one_job(http: aiohttp.ClientSession, api: str, body: bytes) -> tuple[bool, float]:
    started = time.perf_counter()
    headers = {"Content-Type": "application/json", "Prefer": "wait=60"}
    async with http.post(f"{api}/api/v1/face-mask/jobs", data=body, headers=headers) as resp:
        job = await resp.json()
        if resp.status not in (200, 202):
            raise RuntimeError(f"submit answered {resp.status}: {job}")
    while job["status"] not in ("completed", "failed", "cancelled"):
        url = f"{api}/api/v1/jobs/{job['job_id']}"
        async with http.get(url, headers={"Prefer": "wait=60"}) as resp:
            job = await resp.json()
    return job["status"] == "completed", time.perf_counter() - started


def distinct_bodies(image: bytes, count: int) -> list[bytes]:
    """``count`` request bodies whose PNGs decode to the same pixels but differ in bytes.

    Each carries its own ``tEXt`` chunk after ``IHDR``, so no job is answered from
    the result reuse cache (an identical request would be) and every one is run.
    """
    if image[:8] != b"\x89PNG\r\n\x1a\n":
        raise SystemExit("--image must be a PNG")
    ihdr_end = 8 + 4 + 4 + int.from_bytes(image[8:12], "big") + 4
    bodies = []
    for index in range(count):
        data = b"bench\x00" + str(index).encode()
        chunk = len(data).to_bytes(4, "big") + b"tEXt" + data
        chunk += zlib.crc32(b"tEXt" + data).to_bytes(4, "big")
        png = image[:ihdr_end] + chunk + image[ihdr_end:]
        uri = "data:image/png;base64," + base64.b64encode(png).decode()
        bodies.append(json.dumps({"image_url": uri}).encode())
    return bodies


async def drive(api: str, pid: int, bodies: list[bytes], jobs: int, submitters: int) -> Outcome:
    connector = aiohttp.TCPConnector(limit=submitters * 2)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        await wait_ready(http, api)
        # Warm-up: the detector's networks load per worker thread on first use.
        unused = iter(bodies)
        await asyncio.gather(*(one_job(http, api, next(unused)) for _ in range(submitters)))
        left = jobs
        latencies: list[float] = []
        failed = 0

        async def submitter() -> None:
            nonlocal left, failed
            while left > 0:
                left -= 1
                ok, seconds = await one_job(http, api, next(unused))
                latencies.append(seconds)
                failed += not ok

        cpu_before = cpu_seconds(pid)
        started = time.perf_counter()
        await asyncio.gather(*(submitter() for _ in range(submitters)))
        wall = time.perf_counter() - started
        cpu = cpu_seconds(pid) - cpu_before
    return Outcome("", len(latencies), failed, wall, latencies, cpu)


def run_variant(
    label: str, pythonpath: Path | None, args: argparse.Namespace, bodies: list[bytes]
) -> Outcome:
    with tempfile.TemporaryDirectory(prefix="facemask-e2e-") as tmp:
        work = Path(tmp)
        profile = work / "profile.txt" if args.profile else None
        with daemon(pythonpath, work, profile) as (api, pid):
            time.sleep(0.5)
            outcome = asyncio.run(
                drive(api, worker_pid(pid, profile is not None), bodies, args.jobs, args.submitters)
            )
        if profile is not None and profile.exists():
            print(f"\n-- profile: {label} --")
            print(top_functions(profile.read_text(), args.profile_lines))
            if args.profile_out:
                shutil.copy(profile, f"{args.profile_out}-{label.split()[0]}.txt")
    outcome.label = label
    return outcome


def top_functions(raw: str, lines: int) -> str:
    """Self and total samples per function from py-spy's collapsed stacks, all threads."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        samples += count
        frames = [f for f in stack.split(";") if f]
        if not frames:
            continue
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames[1:]):
            total[frame] = total.get(frame, 0) + count
    out = [f"{samples} samples (threads holding the GIL)", "  self%  total%  function"]
    for frame, count in sorted(own.items(), key=lambda kv: -kv[1])[:lines]:
        out.append(
            f"{100 * count / samples:6.1f}  {100 * total.get(frame, 0) / samples:6.1f}  {frame}"
        )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=96, help="timed jobs per variant")
    parser.add_argument("--submitters", type=int, default=16)
    parser.add_argument("--image", default=str(ROOT / "examples" / "face.png"))
    parser.add_argument(
        "--baseline-ref",
        action="append",
        help=f"commit to compare with (repeatable; default {', '.join(DEFAULT_BASELINES)})",
    )
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--profile", action="store_true", help="py-spy the daemon")
    parser.add_argument("--profile-lines", type=int, default=30)
    parser.add_argument(
        "--profile-out", help="keep py-spy's collapsed stacks at PREFIX-<variant>.txt"
    )
    args = parser.parse_args()

    image = Path(args.image).read_bytes()
    bodies = distinct_bodies(image, args.jobs + args.submitters)
    variants: list[tuple[str, Path | None]] = []
    refs = [] if args.no_baseline else (args.baseline_ref or list(DEFAULT_BASELINES))
    with tempfile.TemporaryDirectory(prefix="facemask-base-") as base_dir:
        for ref in refs:
            base = baseline_tree(ref, Path(base_dir) / ref)
            if base is not None:
                variants.append((f"baseline ({ref})", base))
        variants.append(("ours", None))
        results = [run_variant(label, path, args, bodies) for label, path in variants]

    print(
        f"face_mask end to end, embedded default (config/local.toml), {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(
        f"{args.submitters} submitters, {args.jobs} jobs each variant, "
        f"{Path(args.image).name} ({len(image) / 1e6:.2f} MB) as a data: URI "
        f"({len(bodies[0]) / 1e6:.2f} MB body), each PNG with its own tEXt chunk (no reuse)"
    )
    print(
        f"{'variant':<22}{'jobs/s':>8}{'p50 ms':>10}{'p99 ms':>10}{'CPU/job ms':>12}{'failed':>8}"
    )
    for r in results:
        print(
            f"{r.label:<22}{r.rate:>8.2f}{r.pct(0.5):>10.0f}{r.pct(0.99):>10.0f}"
            f"{1000 * r.cpu_s / r.jobs:>12.0f}{r.failed:>8}"
        )
    ours = results[-1]
    for base_r in results[:-1]:
        print(
            f"ours/{base_r.label}: jobs/s {ours.rate / base_r.rate:.2f}x, "
            f"p50 {ours.pct(0.5) / base_r.pct(0.5):.2f}x, "
            f"CPU/job {ours.cpu_s / ours.jobs / (base_r.cpu_s / base_r.jobs):.2f}x"
        )
    verdict = "met" if ours.rate >= 8 else "NOT met"
    print(f"target >= 8 jobs/s for 16 submitters: {verdict} ({ours.rate:.2f} jobs/s)")
    if any(r.failed for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
