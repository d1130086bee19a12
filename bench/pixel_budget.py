"""Peak RSS of 8 concurrent face_mask-sized jobs, each with an input at the pixel limit.

Run: ``.venv/bin/python bench/pixel_budget.py`` (about 2 min on 2 cores).

Each job fetches its input over HTTP through the real ``InputFetcher`` (the
guarded session, the format allow-list, the pixel budget), then does
face_mask's own image work on it: detection on a downscaled copy, the mask
drawn on a full-size copy, the PNG encoded. The input is a ~300 KB PNG of
8,900 × 8,900 (79 MP, under the default 80 MP limit): a grey frame with a face.

Two fresh processes, one after the other, so neither inherits the other's
high-water mark: the default budget (``inputs.max_pixels_in_flight``), and
the same run with the budget lifted (what the worker did before it had one).
Target: ≤ 1 GiB peak on the default settings.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

JOBS = 8
SIDE = 8900
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "face.png"


def make_input(path: Path) -> int:
    from PIL import Image

    frame = Image.new("RGB", (SIDE, SIDE), (128, 128, 128))
    frame.paste(Image.open(EXAMPLE).convert("RGB"), (SIDE // 2, SIDE // 2))
    buffer = io.BytesIO()
    frame.save(buffer, format="PNG", compress_level=9)
    path.write_bytes(buffer.getvalue())
    return len(buffer.getvalue())


async def child(data: bytes, budget_pixels: int) -> dict[str, Any]:
    """Runs in a fresh process: 8 jobs at once, then the process's peak RSS."""
    import aiohttp
    from aiohttp import web

    from shortdrama_worker.contract import FaceBox
    from shortdrama_worker.faces.local import LocalFaceDetector
    from shortdrama_worker.faces.mask import draw_face_mask
    from shortdrama_worker.inputs.fetch import InputFetcher, InputRules, PixelBudget, PixelHold
    from shortdrama_worker.inputs.netguard import AddressPolicy, guarded_session
    from shortdrama_worker.png import encode_png
    from shortdrama_worker.settings import InputSettings, ResultSettings

    local = LocalFaceDetector()
    local.warm_up()

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=data, content_type="image/png")

    app = web.Application()
    app.router.add_get("/frame.png", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    settings = InputSettings(allow_http=True, allow_networks=["127.0.0.0/8"])
    policy = AddressPolicy(settings.allow_networks)
    budget = PixelBudget(budget_pixels)
    baseline_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def image_work(image: Any) -> int:
        faces = local.detect_sync(image)
        box = faces[0] if faces else FaceBox(x=10, y=10, width=100, height=100, confidence=1.0)
        return len(encode_png(draw_face_mask(image, box)))

    async with guarded_session(policy, aiohttp.ClientTimeout(total=60)) as http:
        fetcher = InputFetcher(http, None, InputRules(settings, policy, ResultSettings()), budget)

        async def job() -> None:
            hold = PixelHold(budget)
            try:
                image = await fetcher.fetch_image(
                    f"http://127.0.0.1:{port}/frame.png", field="image_url", hold=hold
                )
                await asyncio.to_thread(image_work, image)
                del image
            finally:
                hold.release()

        started = time.perf_counter()
        await asyncio.gather(*(job() for _ in range(JOBS)))
        seconds = time.perf_counter() - started
    await runner.cleanup()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"peak_mb": peak, "before_mb": baseline_peak, "seconds": seconds}


def run_child(file: Path, budget_pixels: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(file), "--budget", str(budget_pixels)],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(child(args.child.read_bytes(), args.budget))))
        return

    from shortdrama_worker.settings import InputSettings

    default = InputSettings().max_pixels_in_flight
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "frame.png"
        size = make_input(file)
        bounded = run_child(file, default)
        unbounded = run_child(file, 10**15)
    print(
        f"{JOBS} concurrent jobs, each a {SIDE}×{SIDE} PNG ({size / 1e3:.0f} KB, "
        f"{SIDE * SIDE / 1e6:.1f} MP) fetched, decoded, detected, masked and encoded"
    )
    print(f"{'budget':<34}{'peak RSS MB':>12}{'before jobs MB':>16}{'wall s':>9}")
    rows = [
        (f"default ({default / 1e6:.0f} MP in flight)", bounded),
        ("lifted (no budget, as before)", unbounded),
    ]
    for label, r in rows:
        print(f"{label:<34}{r['peak_mb']:>12.0f}{r['before_mb']:>16.0f}{r['seconds']:>9.1f}")
    ratio = bounded["peak_mb"] / unbounded["peak_mb"]
    verdict = "meets" if bounded["peak_mb"] <= 1024 else "MISSES"
    print(f"peak with the budget = {ratio:.2f}× without; {verdict} the 1 GiB target")


if __name__ == "__main__":
    main()
