"""``face_mask`` latency by stage: decode, detect, draw, encode, at 1024² and 4096².

Run: ``.venv/bin/python bench/face_mask.py [--rounds 15]``.

The input is ``examples/face.png`` (512²) upscaled with Lanczos and stored as
PNG, as a client would send a frame. Each stage calls the same functions the
handler does, one after the other on one thread: ``decode_image``
(``inputs.py``), ``LocalFaceDetector.detect_sync`` (with its default settings,
the handler's too), ``draw_face_mask``, ``encode_png`` (``png.py``). Fetching and
S3 are not included. Beside the encode stage it times, as the baseline, the
encoder it replaced (Pillow's PNG writer at level 1 with zlib's RLE strategy)
on the same image, and prints both file sizes.

``--peak-rss SIDE`` (used by ``bench/memory.py``) runs one job in this fresh
process and prints its resident memory before and at the peak, as JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import statistics
import sys
import time
import zlib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image

from shortdrama_worker.faces.local import LocalFaceDetector
from shortdrama_worker.faces.mask import draw_face_mask
from shortdrama_worker.handlers.face_mask import select_face
from shortdrama_worker.inputs.fetch import decode_image
from shortdrama_worker.png import encode_png
from shortdrama_worker.settings import InputSettings

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "face.png"
STAGES = ("decode", "detect", "draw", "encode", "total")


def input_png(side: int) -> bytes:
    image = Image.open(EXAMPLE).convert("RGB").resize((side, side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def detector() -> LocalFaceDetector:
    # The detector's own defaults are the handler's defaults (min face 40 px,
    # confidence 0.9, detection on a copy at most 1024 px on its longest side).
    local = LocalFaceDetector()
    local.warm_up()
    return local


def pillow_png(image: Image.Image) -> bytes:
    """The encoder ``png.encode_png`` replaced: Pillow, level 1, zlib's RLE strategy."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1, compress_type=zlib.Z_RLE)
    return buffer.getvalue()


def one_job(data: bytes, local: LocalFaceDetector) -> dict[str, float]:
    """One face_mask's own image work, timed by stage (seconds), and the baseline encode."""
    marks = [time.perf_counter()]
    image = decode_image(data, "image_url", InputSettings().max_pixels)
    marks.append(time.perf_counter())
    face = select_face(local.detect_sync(image), 0)
    marks.append(time.perf_counter())
    masked = draw_face_mask(image, face)
    marks.append(time.perf_counter())
    png = encode_png(masked)
    marks.append(time.perf_counter())
    stages = {name: b - a for name, a, b in zip(STAGES, marks, marks[1:], strict=False)}
    stages["total"] = marks[-1] - marks[0]
    started = time.perf_counter()
    baseline = pillow_png(masked)
    stages["pillow_encode"] = time.perf_counter() - started
    stages["png_bytes"] = len(png)
    stages["pillow_png_bytes"] = len(baseline)
    return stages


def run(sides: list[int], rounds: int) -> dict[str, Any]:
    local = detector()
    out: dict[str, Any] = {}
    for side in sides:
        data = input_png(side)
        one_job(data, local)  # first call per size: allocator and caches warm up
        samples = [one_job(data, local) for _ in range(rounds)]
        out[str(side)] = {
            "input_bytes": len(data),
            "rounds": rounds,
            **{
                f"{stage}_p50_ms": 1000 * statistics.median(s[stage] for s in samples)
                for stage in STAGES
            },
            "total_p90_ms": 1000 * sorted(s["total"] for s in samples)[int(0.9 * rounds)],
            "pillow_encode_p50_ms": 1000 * statistics.median(s["pillow_encode"] for s in samples),
            "png_bytes": samples[0]["png_bytes"],
            "pillow_png_bytes": samples[0]["pillow_png_bytes"],
        }
    return out


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss(side: int) -> dict[str, float]:
    """Resident memory of one face_mask job at ``side``², in this process."""
    local = detector()
    data = input_png(side)
    before = rss_mb()
    # ru_maxrss is a high-water mark for the process's life; making the input
    # (a decode plus a resize) must not set it, so measure against the input
    # making step's own peak as well.
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    one_job(data, local)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "side": side,
        "rss_before_mb": before,
        "peak_before_job_mb": peak_before,
        "peak_mb": peak,
        "rss_after_mb": rss_mb(),
    }


def format_table(result: dict[str, Any]) -> str:
    lines = [f"{'input':<10}" + "".join(f"{s + ' p50':>13}" for s in STAGES) + f"{'total p90':>12}"]
    for side, row in result.items():
        lines.append(
            f"{side + '²':<10}"
            + "".join(f"{row[s + '_p50_ms']:>10.1f} ms" for s in STAGES)
            + f"{row['total_p90_ms']:>9.1f} ms"
        )
    lines.append("")
    lines.append(
        f"{'input':<10}{'encode ours':>14}{'Pillow (before)':>17}{'ratio':>8}"
        f"{'PNG ours':>12}{'Pillow':>12}"
    )
    for side, row in result.items():
        lines.append(
            f"{side + '²':<10}{row['encode_p50_ms']:>11.1f} ms"
            f"{row['pillow_encode_p50_ms']:>14.1f} ms"
            f"{row['pillow_encode_p50_ms'] / row['encode_p50_ms']:>7.1f}x"
            f"{row['png_bytes'] / 1e6:>9.2f} MB{row['pillow_png_bytes'] / 1e6:>9.2f} MB"
        )
    p50 = result.get("1024", {}).get("total_p50_ms")
    if p50 is not None:
        lines.append(
            f"target ≤150 ms p50 at 1024²: {'met' if p50 <= 150 else 'NOT met'} ({p50:.1f} ms)"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--peak-rss", type=int, metavar="SIDE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_rss:
        print(json.dumps(peak_rss(args.peak_rss)))
        return
    result = run(args.sizes, args.rounds)
    print(json.dumps(result, indent=2) if args.json else format_table(result))


if __name__ == "__main__":
    main()
