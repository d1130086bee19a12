"""``gpu_duty_cycle.py --comfyui-url URL``: our pipeline against a real ComfyUI.

No model weights are needed: the bench's own template
(``bench/comfy_workflows/camera_angle_cpu.json``) carries every marker the
``comfy_camera_angle`` handler sets, but its work is pure image nodes that
ship with ComfyUI — ``LoadImage`` → ``ImageScale`` up to a work size →
``ImageBlur`` → ``ImageSharpen`` → ``ImageScale`` back → ``SaveImage``. The
camera-angle parameters land on unconnected ``Primitive*`` nodes, which ComfyUI
accepts and never runs. The work size is calibrated first, against the server,
so that one prompt executes in about ``--exec-s`` seconds.

Rows, in one invocation, each over the same number of prompts:

* **physical limit**: the same graphs (inputs uploaded beforehand) queued
  straight into ComfyUI back to back with ``POST /prompt``, no worker between;
  what ComfyUI itself leaves idle between two prompts;
* **ours**: the real handler through ``drive`` (``FakeJobContext``, one GPU
  slot, ``--concurrency`` jobs in flight), once per ``--queue-ahead`` value.

Busy time comes from ComfyUI's own clock: each prompt's ``/history`` entry
holds ``execution_start`` and ``execution_success`` with a ``timestamp`` in
milliseconds. Busy fraction at saturation = Σ(success − start) ÷ (last
success − first start); idle per prompt = (that span − busy) ÷ (n − 1).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

TEMPLATE = Path(__file__).resolve().parent / "comfy_workflows" / "camera_angle_cpu.json"
TARGET_GAP_MS = 50.0
_SUBFOLDER = "shortdrama"  # ComfySettings.upload_subfolder's default: same paths as ours
_MIN_WIDTH, _MAX_WIDTH = 256, 8192

Driver = Callable[..., Awaitable[tuple[float, list[dict[str, Any]]]]]


@dataclass
class Row:
    """One batch of prompts, timed by ComfyUI."""

    name: str
    wall_s: float  # our clock: first submission (or job start) to the last prompt done
    spans: list[tuple[float, float]] = field(default_factory=list)  # ComfyUI's, in seconds

    @property
    def jobs(self) -> int:
        return len(self.spans)

    @property
    def busy_s(self) -> float:
        return sum(end - start for start, end in self.spans)

    @property
    def saturated_s(self) -> float:
        return max(end for _, end in self.spans) - min(start for start, _ in self.spans)

    @property
    def busy_fraction(self) -> float:
        return self.busy_s / self.saturated_s

    @property
    def idle_ms(self) -> float:
        """Mean idle time between two prompts while the batch lasted."""
        return (self.saturated_s - self.busy_s) / max(self.jobs - 1, 1) * 1000.0

    def gaps_ms(self) -> list[float]:
        ordered = sorted(self.spans)
        return [(b[0] - a[1]) * 1000.0 for a, b in itertools.pairwise(ordered)]

    @property
    def gap_p50_ms(self) -> float:
        """The typical gap: ComfyUI's periodic ``gc.collect`` pauses do not move it."""
        return statistics.median(self.gaps_ms() or [0.0])

    @property
    def jobs_per_min(self) -> float:
        return self.jobs * 60.0 / self.wall_s


def parse_queue_ahead(text: str | None) -> list[int | None]:
    """``"0,1"`` → ``[0, 1]``; unset → one row with the settings' own default."""
    if text is None:
        return [None]
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(f"--queue-ahead: expected integers like 0,1; got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise SystemExit(f"--queue-ahead: expected integers ≥ 0 like 0,1; got {text!r}")
    from shortdrama_worker.handlers.comfy_common import ComfySettings

    if "queue_ahead" not in ComfySettings.model_fields:
        raise SystemExit(
            "--queue-ahead: this shortdrama_worker has no ComfySettings.queue_ahead setting "
            "yet; run without --queue-ahead (one 'ours' row with the current pipeline)"
        )
    return list(values)


async def _json(http: Any, method: str, url: str, **kwargs: Any) -> Any:
    async with http.request(method, url, **kwargs) as response:
        if response.status >= 400:
            raise SystemExit(f"{method} {url}: HTTP {response.status}: {await response.text()}")
        return await response.json()


async def _upload(http: Any, base: str, image: bytes, name: str) -> str:
    form = aiohttp.FormData()
    form.add_field("image", image, filename=name, content_type="image/png")
    form.add_field("subfolder", _SUBFOLDER)
    form.add_field("overwrite", "true")
    body = await _json(http, "POST", f"{base}/upload/image", data=form)
    return f"{body['subfolder']}/{body['name']}" if body.get("subfolder") else str(body["name"])


async def _span(http: Any, base: str, prompt_id: str) -> tuple[float, float]:
    """(execution_start, execution_success) of one finished prompt, ComfyUI's clock."""
    entry = (await _json(http, "GET", f"{base}/history/{prompt_id}")).get(prompt_id)
    if not entry:
        raise SystemExit(f"prompt {prompt_id} is not in ComfyUI's history")
    events = {name: data for name, data in entry.get("status", {}).get("messages", [])}
    start, end = events.get("execution_start"), events.get("execution_success")
    if not start or not end or "timestamp" not in start:
        status = entry.get("status", {}).get("status_str")
        raise SystemExit(
            f"prompt {prompt_id} ({status}): no execution_start/execution_success timestamps "
            f"in its history (events: {sorted(events)}); ComfyUI older than 0.3.4x?"
        )
    return start["timestamp"] / 1000.0, end["timestamp"] / 1000.0


async def spans(http: Any, base: str, prompt_ids: Sequence[str]) -> list[tuple[float, float]]:
    return list(await asyncio.gather(*(_span(http, base, p) for p in prompt_ids)))


def _values(job_id: str, image_value: str) -> dict[str, Any]:
    """What the camera-angle handler sets for a rotate_right 45° job with id ``job_id``."""
    from shortdrama_worker.handlers.camera_angle import camera_instruction
    from shortdrama_worker.handlers.comfy_common import derive_seed

    return {
        "image": image_value,
        "prompt": camera_instruction("rotate_right", 45),
        "seed": derive_seed(job_id),
        "steps": 4,
        "cfg": 1.0,
        "lora_strength": 1.25,
        "lightning_strength": 1.0,
        "filename_prefix": f"{_SUBFOLDER}/{job_id}",
    }


async def _until_done(ws: Any, prompt_ids: Sequence[str]) -> None:
    """Read ComfyUI's socket until every prompt has ended (``executing`` with no node)."""
    left = set(prompt_ids)
    async for message in ws:
        if message.type is not aiohttp.WSMsgType.TEXT:
            continue  # preview frames
        event = json.loads(message.data)
        data = event.get("data") or {}
        if event.get("type") == "execution_error":
            raise SystemExit(f"prompt {data.get('prompt_id')} failed: {data}")
        if event.get("type") == "executing" and data.get("node") is None:
            left.discard(data.get("prompt_id"))
            if not left:
                return
    raise SystemExit(f"ComfyUI closed the socket with {len(left)} prompts unfinished")


async def queue_direct(
    http: Any, base: str, workflow: Any, image: bytes, prefix: str, count: int
) -> Row:
    """The physical limit: ``count`` prompts queued at once, nothing between them."""
    job_ids = [f"{prefix}-{i}" for i in range(count)]
    # Distinct file names: ComfyUI's cache never serves one prompt from another.
    uploads = await asyncio.gather(*(_upload(http, base, image, f"{j}.png") for j in job_ids))
    graphs = [workflow.render(_values(j, u)) for j, u in zip(job_ids, uploads, strict=True)]
    prompt_ids = [str(uuid.uuid4()) for _ in graphs]
    # Told over the socket, as our handler is: no polling load on ComfyUI meanwhile.
    async with http.ws_connect(f"{base}/ws", params={"clientId": prefix}) as ws:
        started = time.monotonic()
        for graph, prompt_id in zip(graphs, prompt_ids, strict=True):
            payload = {"prompt": graph, "prompt_id": prompt_id, "client_id": prefix}
            await _json(http, "POST", f"{base}/prompt", json=payload)
        await _until_done(ws, prompt_ids)
        wall = time.monotonic() - started
    return Row("physical limit", wall, await spans(http, base, prompt_ids))


async def calibrate(
    http: Any, base: str, image: bytes, target_s: float, nonce: str
) -> tuple[Any, float]:
    """The template with a work size that executes in about ``target_s``; and that time."""
    from shortdrama_worker.comfy.workflows import Workflow

    template = Workflow.load(TEMPLATE)
    width = int(template.graph[template.markers["work_width"][0].node_id]["inputs"]["width"])
    measured = 0.0
    # The first prompt also warms ComfyUI up, so it never counts as the answer.
    for attempt in range(5):
        sized = _sized(template, width)
        row = await queue_direct(http, base, sized, image, f"{nonce}-cal{attempt}", 2)
        measured = statistics.median(end - start for start, end in row.spans)
        if attempt > 0 and abs(measured - target_s) <= 0.08 * target_s:
            return sized, measured
        # Work grows with the pixel count, i.e. with the square of the width.
        width = int(width * math.sqrt(target_s / measured) / 8) * 8
        width = min(max(width, _MIN_WIDTH), _MAX_WIDTH)
    return _sized(template, width), measured


def _sized(template: Any, width: int) -> Any:
    from shortdrama_worker.comfy.workflows import Workflow

    graph = template.render({"work_width": width, "work_height": width * 2 // 3})
    return Workflow.from_graph(graph, name=template.name, source=template.source)


def work_size(workflow: Any) -> str:
    inputs = workflow.graph[workflow.markers["work_width"][0].node_id]["inputs"]
    return f"{inputs['width']}×{inputs['height']}"


async def ours(
    args: argparse.Namespace,
    drive: Driver,
    http: Any,
    workflow_dir: Path,
    image: bytes,
    queue_ahead: int | None,
    prefix: str,
) -> Row:
    """The real handler on the calibrated template, through the simulated mode's ``drive``."""
    from shortdrama_worker.handlers.comfy_common import ComfySettings

    extra: dict[str, Any] = {} if queue_ahead is None else {"queue_ahead": queue_ahead}
    settings = ComfySettings(
        base_url=args.comfyui_url,
        workflow_dir=workflow_dir,
        workflow=TEMPLATE.stem,
        **extra,
    )
    # A session of its own, as a fresh daemon has: the handlers' server pool is
    # per session and keeps a server's slots and queue_ahead from its first user.
    async with aiohttp.ClientSession() as own:
        wall, results = await drive(args, settings, image, own, prefix=prefix)
    name = "ours" if queue_ahead is None else f"ours qa={queue_ahead}"
    return Row(name, wall, await spans(http, args.comfyui_url, [r["prompt_id"] for r in results]))


async def _check_idle(http: Any, base: str) -> str:
    """ComfyUI's version; stop if its queue is not empty (someone else's prompts)."""
    stats = await _json(http, "GET", f"{base}/system_stats")
    queue = await _json(http, "GET", f"{base}/queue")
    if queue.get("queue_running") or queue.get("queue_pending"):
        raise SystemExit(f"{base}: ComfyUI's queue is not empty; the bench needs it to itself")
    return str(stats.get("system", {}).get("comfyui_version", "unknown"))


async def run(args: argparse.Namespace, image: bytes, drive: Driver) -> list[list[Row]]:
    """Calibrate, then per round: the physical limit, then ours per queue-ahead value."""
    base = args.comfyui_url.rstrip("/")
    args.comfyui_url = base
    queue_aheads = parse_queue_ahead(args.queue_ahead)
    nonce = uuid.uuid4().hex[:8]
    rounds: list[list[Row]] = []
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        version = await _check_idle(http, base)
        workflow, measured = await calibrate(http, base, image, args.exec_s, nonce)
        with tempfile.TemporaryDirectory(prefix="bench-comfy-") as tmp:
            (Path(tmp) / TEMPLATE.name).write_text(json.dumps(workflow.graph), encoding="utf-8")
            for round_ in range(args.rounds):
                tag = f"{nonce}-r{round_}"
                rows = [await queue_direct(http, base, workflow, image, f"{tag}-phys", args.jobs)]
                for qa in queue_aheads:
                    prefix = f"{tag}-qa{'d' if qa is None else qa}"
                    rows.append(await ours(args, drive, http, Path(tmp), image, qa, prefix))
                rounds.append(rows)
    _print(args, version, workflow, measured, rounds)
    return rounds


def _print(
    args: argparse.Namespace,
    version: str,
    workflow: Any,
    measured: float,
    rounds: list[list[Row]],
) -> None:
    print(
        f"real ComfyUI {version} at {args.comfyui_url}: template {TEMPLATE.name}, work size "
        f"{work_size(workflow)} (calibrated: {measured:.2f} s/prompt, asked {args.exec_s:g} s)"
    )
    print(
        f"ours: {args.concurrency} jobs in flight, 1 GPU slot, fetch {args.fetch_s:g} s, "
        f"store {args.store_s:g} s; physical limit: the same prompts queued at once; "
        f"{args.jobs} prompts per row; times from ComfyUI's execution_start/execution_success"
    )
    header = (
        f"{'row':<16}{'jobs':>5}{'wall s':>8}{'busy s':>8}{'span s':>8}{'busy@sat':>9}"
        f"{'idle/prompt ms':>15}{'gap p50 ms':>11}{'gap max ms':>11}{'jobs/min':>9}"
    )
    for index, rows in enumerate(rounds):
        print(f"round {index + 1} of {len(rounds)}")
        print(header)
        print("-" * len(header))
        for row in rows:
            gaps = row.gaps_ms() or [0.0]
            print(
                f"{row.name:<16}{row.jobs:>5}{row.wall_s:>8.2f}{row.busy_s:>8.2f}"
                f"{row.saturated_s:>8.2f}{row.busy_fraction:>9.1%}{row.idle_ms:>15.1f}"
                f"{row.gap_p50_ms:>11.1f}{max(gaps):>11.1f}{row.jobs_per_min:>9.2f}"
            )
        for row in rows:
            gaps = " ".join(f"{gap:.0f}" for gap in row.gaps_ms())
            print(f"  gaps in start order, ms, {row.name}: {gaps}")
        _print_ratios(rows)
    if len(rounds) > 1:
        _print_summary(rounds)


def _print_ratios(rows: Sequence[Row]) -> None:
    limit = rows[0]
    for row in rows[1:]:
        gap = row.idle_ms - limit.idle_ms
        verdict = "met" if gap <= TARGET_GAP_MS else "NOT met"
        busy = row.busy_fraction / limit.busy_fraction
        print(
            f"{row.name} / physical limit: busy fraction x{busy:.3f}, "
            f"throughput x{row.jobs_per_min / limit.jobs_per_min:.3f}; gap attributable to us "
            f"{gap:.1f} ms/prompt (target ≤ {TARGET_GAP_MS:g} ms: {verdict}); "
            f"median gap {row.gap_p50_ms - limit.gap_p50_ms:+.1f} ms"
        )


def _print_summary(rounds: Sequence[Sequence[Row]]) -> None:
    by_name: dict[str, list[Row]] = {}
    for rows in rounds:
        for row in rows:
            by_name.setdefault(row.name, []).append(row)
    baseline = rounds[0][0].name
    limit = statistics.median(r.idle_ms for r in by_name[baseline])
    limit_p50 = statistics.median(r.gap_p50_ms for r in by_name[baseline])
    print(f"median over {len(rounds)} rounds:")
    for name, rows in by_name.items():
        idle = statistics.median(r.idle_ms for r in rows)
        p50 = statistics.median(r.gap_p50_ms for r in rows)
        busy = statistics.median(r.busy_fraction for r in rows)
        line = (
            f"  {name:<16} busy@sat {busy:.1%}, idle/prompt {idle:.1f} ms, median gap {p50:.1f} ms"
        )
        if name != baseline:
            line += (
                f"; gap attributable to us {idle - limit:.1f} ms/prompt "
                f"(median gap {p50 - limit_p50:+.1f} ms)"
            )
        print(line)
