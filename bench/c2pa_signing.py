"""Content Credentials cost per result image at 1024²: signing time and bytes added.

Run: ``.venv/bin/python bench/c2pa_signing.py [--rounds 30]``.

For each format the host signs (PNG, JPEG, WebP) the result image is
``examples/face.png`` upscaled to 1024² and encoded as a handler would (PNG
through ``png.encode_png``, JPEG q=92, WebP q=90). Beside the signing time it
times, as the baseline from the same run, encoding that image (the work a
handler already does for every result), and prints the unsigned and signed
sizes. Signing is what ``RunContext.store_result`` does: ``ContentCredentials.sign``
with the job's facts and one 1024² PNG input as ingredient (hashed, never
embedded), ES256 with a development certificate, c2pa's verify-after-sign on.
A second row per format adds a signed input (a result of an earlier job), whose
manifest travels into the new one.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image

from shortdrama_worker.contract import Provenance
from shortdrama_worker.png import encode_png
from shortdrama_worker.provenance import (
    ContentCredentials,
    InputRecord,
    JobFacts,
    load_credentials,
    make_dev_certificate,
    read_credentials,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "face.png"
SIDE = 1024


def encoders() -> dict[str, Callable[[Image.Image], bytes]]:
    def pillow(fmt: str, **options: int) -> Callable[[Image.Image], bytes]:
        def encode(image: Image.Image) -> bytes:
            buffer = io.BytesIO()
            image.save(buffer, format=fmt, **options)
            return buffer.getvalue()

        return encode

    return {
        "image/png": encode_png,
        "image/jpeg": pillow("JPEG", quality=92),
        "image/webp": pillow("WEBP", quality=90),
    }


def timed(fn: Callable[[], object], rounds: int) -> list[float]:
    fn()  # warm-up: first calls load the native library and its tables
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def ms(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"{statistics.median(values) * 1000:7.1f} / {p95 * 1000:6.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()

    image = Image.open(EXAMPLE).convert("RGB").resize((SIDE, SIDE), Image.Resampling.LANCZOS)
    with tempfile.TemporaryDirectory() as tmp:
        files = make_dev_certificate(Path(tmp))
        signer = ContentCredentials(load_credentials(files.chain, files.key), timestamp_url=None)
        trust = files.ca.read_text()
    frame = InputRecord("image_url", encode_png(image), "image/png")
    facts = JobFacts("bench-job", "face_mask", 1, "editor", time.time(), "result")
    provenance = Provenance(action="c2pa.edited", parent="image_url")
    earlier = signer.sign(frame.data, "image/png", facts, provenance, [frame])
    chained = [InputRecord("image_url", earlier.data, "image/png")]

    print(
        f"{SIDE}x{SIDE} result, {args.rounds} rounds; times in ms as median / p95; "
        "ratio = signing time / encoding time"
    )
    header = (
        f"{'format':<11}{'inputs':<15}{'encode ms':>16}{'sign ms':>16}{'ratio':>7}"
        f"{'unsigned B':>12}{'signed B':>11}{'added B':>9}{'added':>8}"
    )
    print(header)
    print("-" * len(header))
    for content_type, encode in encoders().items():
        data = encode(image)
        encode_times = timed(lambda e=encode: e(image), args.rounds)
        for label, inputs in (("1 unsigned", [frame]), ("1 signed", chained)):
            signed = signer.sign(data, content_type, facts, provenance, inputs)
            report = read_credentials(signed.data, content_type, trust_anchors=trust)
            assert report.trusted, report.failures
            sign_times = timed(
                lambda d=data, c=content_type, i=inputs: signer.sign(d, c, facts, provenance, i),
                args.rounds,
            )
            added = len(signed.data) - len(data)
            ratio = statistics.median(sign_times) / statistics.median(encode_times)
            print(
                f"{content_type:<11}{label:<15}{ms(encode_times):>16}{ms(sign_times):>16}"
                f"{ratio:>7.2f}{len(data):>12}{len(signed.data):>11}{added:>9}"
                f"{added / len(data):>8.2%}"
            )
    verify_times = timed(
        lambda: read_credentials(signed.data, content_type, trust_anchors=trust), args.rounds
    )
    print(f"\nreading and validating one signed {content_type} result: {ms(verify_times)} ms")


if __name__ == "__main__":
    main()
