"""Where our worker's CPU goes on the dispatch hot path (pyinstrument).

Run: ``.venv/bin/python bench/profile_dispatch.py [--jobs 300]``.

A burst of no-op jobs (as in ``celery_compare``) through a worker process
that profiles itself (``BENCH_PROFILE``); the worker's, moto's and the
client's CPU use over the burst are printed too, which says who the
bottleneck is. The full pyinstrument tree is written to
``dispatch-profile.txt`` in the temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import dispatch

OUT = Path(tempfile.gettempdir()) / "dispatch-profile.txt"


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc (no psutil needed)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--submitters", type=int, default=16)
    parser.add_argument("--lines", type=int, default=60, help="lines of the tree to print")
    args = parser.parse_args()
    try:
        import pyinstrument  # noqa: F401
    except ImportError:
        sys.exit(f"needs pyinstrument: {sys.executable} -m pip install -r bench/requirements.txt")
    dispatch.quiet_logging()
    env = {dispatch.PROFILE_ENV: str(OUT)}
    with dispatch.moto_process() as endpoint:
        moto_pid = dispatch.LAST_MOTO_PID
        with dispatch.worker_process(endpoint, env=env) as (url, pid):
            before = (cpu_s(pid), cpu_s(moto_pid), time.process_time())
            started = time.perf_counter()
            result = asyncio.run(dispatch.run_burst(url, args.jobs, submitters=args.submitters))
            wall = time.perf_counter() - started
            after = (cpu_s(pid), cpu_s(moto_pid), time.process_time())
    use = [100 * (b - a) / wall for a, b in zip(before, after, strict=True)]
    print(
        f"burst of {args.jobs} no-op jobs: {result['jobs_per_s']:.1f} jobs/s; CPU over the burst: "
        f"worker {use[0]:.0f}%, moto {use[1]:.0f}%, client {use[2]:.0f}% (of one core)"
    )
    lines = OUT.read_text().splitlines()
    print("\n".join(lines[: args.lines]))
    print(f"(full tree: {OUT})")


if __name__ == "__main__":
    main()
