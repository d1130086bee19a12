"""GPU duty cycle: our ComfyUI pipeline against the older one-job-at-a-time design.

Run: ``.venv/bin/python bench/gpu_duty_cycle.py`` (about 80 s with the defaults).

Both designs drive the same simulated ComfyUI (``tests/fakes/comfyui.py``,
speaking ComfyUI v0.8's protocol over real HTTP and WebSocket on 127.0.0.1):
one prompt executes at a time and takes ``--exec-s``; uploads and ``/view``
downloads take ``--upload-s`` and ``--download-s``; fetching an input and
storing a result (S3 in production) take ``--fetch-s`` and ``--store-s``.

* **ours**: the real ``comfy_camera_angle`` handler, ``--concurrency`` jobs in
  flight (the consumer's ``max_in_flight``), one GPU slot; the slot is held
  only from prompt submission to completion, so one job's transfers overlap
  the next job's execution.
* **old**: one job at a time; upload, submit, poll ``/history/{id}`` every
  ``--poll-s`` until done, download, store.

"Busy" is the time the simulated ComfyUI spent executing prompts. The duty
cycle is busy ÷ wall, reported over the whole batch (ramp-up and tail
included) and at saturation (first execution start → last execution end).

``--servers N`` (N > 1) measures several ComfyUI servers per daemon instead:
a mixed load (camera-angle and qwen-image-edit jobs alternating), ``2 × N``
jobs in flight, one slot per server, and per-server duty cycles, beside the
same load on one server from the same run.

``--comfyui-url URL`` drives a real ComfyUI instead (no model weights needed;
see ``bench/_real_comfyui.py``): the same handler and pipeline on a calibrated
image-only graph, beside the same prompts queued straight into ComfyUI (the
physical limit), with busy time from ComfyUI's own execution timestamps, e.g.
``--comfyui-url http://127.0.0.1:8188 --jobs 12 --exec-s 1.5 --queue-ahead 0,1
--rounds 3`` (about 4 minutes on a CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Outcome:
    name: str
    jobs: int
    wall_s: float
    busy_s: float
    saturated_wall_s: float

    @property
    def duty(self) -> float:
        return self.busy_s / self.wall_s

    @property
    def saturated_duty(self) -> float:
        return self.busy_s / self.saturated_wall_s

    @property
    def jobs_per_min(self) -> float:
        return self.jobs * 60.0 / self.wall_s


def _input_png() -> bytes:
    from PIL import Image

    image = Image.linear_gradient("L").resize((768, 512)).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _outcome(name: str, jobs: int, wall: float, executions: list[Any]) -> Outcome:
    busy = sum(e.ended - e.started for e in executions)
    saturated = max(e.ended for e in executions) - min(e.started for e in executions)
    return Outcome(name, jobs, wall, busy, saturated)


async def drive(
    args: argparse.Namespace,
    settings: Any,
    image: bytes,
    http: Any,
    *,
    prefix: str = "bench",
) -> tuple[float, list[dict[str, Any]]]:
    """Our pipeline: ``args.jobs`` camera-angle jobs, ``args.concurrency`` in flight, 1 slot.

    The wall time of the batch and each job's result (its ``prompt_id`` among them).
    """
    from shortdrama_worker.contract.testing import FakeJobContext, GpuGate, data_uri, make_env
    from shortdrama_worker.handlers.camera_angle import CameraAngleHandler, CameraAngleInput
    from shortdrama_worker.metrics import Metrics

    env = make_env(
        CameraAngleHandler,
        settings,
        kind="comfy_camera_angle",
        service_http=http,
        metrics=Metrics(),
    )
    handler = CameraAngleHandler(env)
    await handler.startup()
    gate = GpuGate(slots=1)
    in_flight = asyncio.Semaphore(args.concurrency)
    params = CameraAngleInput(image=data_uri(image), move="rotate_right", degrees=45)

    async def job(index: int) -> dict[str, Any]:
        async with in_flight:
            ctx = FakeJobContext(
                job_id=f"{prefix}-{index}",
                kind="comfy_camera_angle",
                http=http,
                gate=gate,
                metrics=env.metrics,
                fetch_latency_s=args.fetch_s,
                store_latency_s=args.store_s,
            )
            return await handler.run(params, ctx)

    try:
        started = time.monotonic()
        results = await asyncio.gather(*(job(i) for i in range(args.jobs)))
        wall = time.monotonic() - started
    finally:
        await handler.shutdown()
    return wall, list(results)


async def run_ours(args: argparse.Namespace, image: bytes) -> Outcome:
    import aiohttp
    from fakes.comfyui import FakeComfyUI, Script

    from shortdrama_worker.handlers.comfy_common import ComfySettings

    fake = FakeComfyUI(
        default=Script(exec_s=args.exec_s),
        upload_latency_s=args.upload_s,
        view_latency_s=args.download_s,
    )
    async with fake as comfy, aiohttp.ClientSession() as http:
        wall, _ = await drive(args, ComfySettings(base_url=comfy.url), image, http)
        return _outcome("ours", args.jobs, wall, comfy.executions)


async def run_old(args: argparse.Namespace, image: bytes) -> Outcome:
    """The older orchestrator: everything in sequence, completion found by polling."""
    import aiohttp
    from fakes.comfyui import FakeComfyUI, Script

    from shortdrama_worker.comfy.workflows import load_workflow

    workflow = load_workflow("camera_angle", None)
    fake = FakeComfyUI(
        default=Script(exec_s=args.exec_s),
        upload_latency_s=args.upload_s,
        view_latency_s=args.download_s,
    )
    async with fake as comfy, aiohttp.ClientSession() as http:
        started = time.monotonic()
        for index in range(args.jobs_old):
            await asyncio.sleep(args.fetch_s)
            form = aiohttp.FormData()
            form.add_field("image", image, filename=f"old-{index}.png", content_type="image/png")
            form.add_field("overwrite", "true")
            async with http.post(f"{comfy.url}/upload/image", data=form) as response:
                name = (await response.json())["name"]
            graph = workflow.render({"image": name, "prompt": "x", "seed": index})
            prompt_id = str(uuid.uuid4())
            payload = {"prompt": graph, "prompt_id": prompt_id}
            async with http.post(f"{comfy.url}/prompt", json=payload) as response:
                response.raise_for_status()
            while True:
                await asyncio.sleep(args.poll_s)
                async with http.get(f"{comfy.url}/history/{prompt_id}") as response:
                    entry = (await response.json()).get(prompt_id)
                if entry:
                    break
            for output in entry["outputs"].values():
                for item in output["images"]:
                    async with http.get(f"{comfy.url}/view", params=item) as response:
                        await response.read()
                    await asyncio.sleep(args.store_s)
        wall = time.monotonic() - started
        return _outcome("old", args.jobs_old, wall, comfy.executions)


async def run_servers(args: argparse.Namespace, image: bytes, count: int) -> list[Outcome]:
    """A mixed load on ``count`` fake servers; one ``Outcome`` per server, then the total."""
    import contextlib

    import aiohttp
    from fakes.comfyui import FakeComfyUI, Script

    from shortdrama_worker.contract.testing import FakeJobContext, GpuGate, data_uri, make_env
    from shortdrama_worker.handlers.camera_angle import CameraAngleHandler, CameraAngleInput
    from shortdrama_worker.handlers.comfy_common import ComfySettings
    from shortdrama_worker.handlers.qwen_edit import QwenEditHandler, QwenEditInput
    from shortdrama_worker.metrics import Metrics

    async with contextlib.AsyncExitStack() as stack:
        fakes = [
            await stack.enter_async_context(
                FakeComfyUI(
                    default=Script(exec_s=args.exec_s),
                    upload_latency_s=args.upload_s,
                    view_latency_s=args.download_s,
                )
            )
            for _ in range(count)
        ]
        http = await stack.enter_async_context(aiohttp.ClientSession())
        servers = [{"name": f"gpu{i}", "base_url": f.url} for i, f in enumerate(fakes)]
        settings = ComfySettings(servers=servers)  # type: ignore[arg-type]
        metrics = Metrics()
        handlers = []
        kinds = (("comfy_camera_angle", CameraAngleHandler), ("qwen_edit", QwenEditHandler))
        for kind, cls in kinds:
            env = make_env(cls, settings, kind=kind, service_http=http, metrics=metrics)
            handler = cls(env)
            await handler.startup()
            handlers.append(handler)
        gate = GpuGate(slots=count)
        in_flight = asyncio.Semaphore(args.concurrency * count)
        camera = CameraAngleInput(image=data_uri(image), move="rotate_right", degrees=45)
        edit = QwenEditInput(images=[data_uri(image)], prompt="Make it night")

        async def job(index: int) -> None:
            async with in_flight:
                kind = ("comfy_camera_angle", "qwen_edit")[index % 2]
                ctx = FakeJobContext(
                    job_id=f"bench-{index}", kind=kind, http=http, gate=gate, metrics=metrics,
                    fetch_latency_s=args.fetch_s, store_latency_s=args.store_s,
                )  # fmt: skip
                params: Any = camera if index % 2 == 0 else edit
                await handlers[index % 2].run(params, ctx)

        jobs = args.jobs * count
        started = time.monotonic()
        await asyncio.gather(*(job(i) for i in range(jobs)))
        wall = time.monotonic() - started
        for handler in handlers:
            await handler.shutdown()
        outcomes = [
            _outcome(f"gpu{i}", len(f.executions), wall, f.executions) for i, f in enumerate(fakes)
        ]
        everything = [e for f in fakes for e in f.executions]
        total = _outcome(f"{count} srv", jobs, wall, everything)
        total.busy_s /= count  # per GPU, so the duty cycle stays a fraction
        total.saturated_wall_s = max(o.saturated_wall_s for o in outcomes)
        return [*outcomes, total]


def _print_servers(args: argparse.Namespace, runs: list[list[Outcome]]) -> None:
    print(
        f"simulated ComfyUI: {args.exec_s:g} s/prompt per server; mixed load (camera-angle, "
        f"qwen-image-edit); {args.concurrency} jobs in flight per server, 1 slot per server"
    )
    header = (
        f"{'server':<9}{'jobs':>6}{'wall s':>9}{'busy s':>9}"
        f"{'duty':>8}{'duty@sat':>10}{'jobs/min':>10}"
    )
    print(header)
    print("-" * len(header))
    for outcomes in runs:
        for outcome in outcomes:
            print(
                f"{outcome.name:<9}{outcome.jobs:>6}{outcome.wall_s:>9.2f}{outcome.busy_s:>9.2f}"
                f"{outcome.duty:>8.1%}{outcome.saturated_duty:>10.1%}{outcome.jobs_per_min:>10.2f}"
            )
    many, one = runs[0][-1], runs[1][-1]
    print(
        f"ratio {many.name}/1 srv: throughput x{many.jobs_per_min / one.jobs_per_min:.2f}, "
        f"per-GPU duty cycle x{many.duty / one.duty:.2f}"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exec-s", type=float, default=2.5, help="execution time per prompt")
    parser.add_argument("--fetch-s", type=float, default=0.2, help="input fetch latency")
    parser.add_argument("--upload-s", type=float, default=0.2, help="ComfyUI upload latency")
    parser.add_argument("--download-s", type=float, default=0.2, help="ComfyUI /view latency")
    parser.add_argument("--store-s", type=float, default=0.2, help="result store (S3) latency")
    parser.add_argument("--jobs", type=int, default=16, help="jobs for our pipeline")
    parser.add_argument("--jobs-old", type=int, default=8, help="jobs for the old design")
    parser.add_argument("--concurrency", type=int, default=2, help="our jobs in flight")
    parser.add_argument("--poll-s", type=float, default=2.0, help="old design's poll period")
    parser.add_argument(
        "--servers", type=int, default=1, help="ComfyUI servers (N > 1: per-server duty cycle)"
    )
    real = parser.add_argument_group("real ComfyUI (see bench/_real_comfyui.py)")
    real.add_argument(
        "--comfyui-url",
        help="a real ComfyUI (e.g. http://127.0.0.1:8188) instead of the simulated one; "
        "--exec-s is then the time one prompt is calibrated to take",
    )
    real.add_argument(
        "--queue-ahead",
        help="ours once per value of ComfySettings.queue_ahead, e.g. 0,1 (default: one row "
        "with the settings' own default)",
    )
    real.add_argument("--rounds", type=int, default=1, help="repeat every row this many times")
    return parser


async def _main(args: argparse.Namespace) -> None:
    image = _input_png()
    if args.comfyui_url:
        from bench import _real_comfyui

        await _real_comfyui.run(args, image, drive)
        return
    if args.queue_ahead is not None:
        raise SystemExit("--queue-ahead needs --comfyui-url (the simulated ComfyUI has no queue)")
    if args.servers > 1:
        several = await run_servers(args, image, args.servers)
        single = await run_servers(args, image, 1)
        _print_servers(args, [several, single])
        return
    ours = await run_ours(args, image)
    old = await run_old(args, image)
    print(
        f"simulated ComfyUI: {args.exec_s:g} s/prompt, one at a time; latency fetch "
        f"{args.fetch_s:g} s, upload {args.upload_s:g} s, download {args.download_s:g} s, "
        f"store {args.store_s:g} s"
    )
    print(
        f"ours: {args.concurrency} jobs in flight, 1 GPU slot; "
        f"old: 1 job at a time, polled every {args.poll_s:g} s"
    )
    header = (
        f"{'design':<7}{'jobs':>6}{'wall s':>9}{'busy s':>9}"
        f"{'duty':>8}{'duty@sat':>10}{'jobs/min':>10}"
    )
    print(header)
    print("-" * len(header))
    for outcome in (ours, old):
        print(
            f"{outcome.name:<7}{outcome.jobs:>6}{outcome.wall_s:>9.2f}{outcome.busy_s:>9.2f}"
            f"{outcome.duty:>8.1%}{outcome.saturated_duty:>10.1%}{outcome.jobs_per_min:>10.2f}"
        )
    print(
        f"ratio ours/old: throughput x{ours.jobs_per_min / old.jobs_per_min:.2f}, "
        f"duty cycle x{ours.duty / old.duty:.2f}"
    )
    target = "met" if ours.saturated_duty >= 0.97 else "NOT met"
    print(f"target >= 97% duty cycle at saturation: {target} ({ours.saturated_duty:.1%})")


def main() -> None:

    root = Path(__file__).resolve().parent.parent
    # The fake ComfyUI and the recording context live with the tests; the
    # real-ComfyUI mode is bench._real_comfyui.
    sys.path[:0] = [str(root / "tests"), str(root)]
    # One log line per job would bury the table.
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    asyncio.run(_main(_parser().parse_args()))


if __name__ == "__main__":
    main()
