"""The ComfyUI back end: Qwen-Image-Edit-2509 with three reference images.

Picture 1 is the person, Picture 2 the clothing collage, Picture 3 the
place; the output size is an empty latent (the place's aspect ratio unless
the job asks). The pipeline is the one the worker's ComfyUI kinds use::

    fetch, collage, upload, open socket | ctx.gpu(): submit ... completion | download, store
    ----------- outside the slot ------- | ------- holding the GPU slot ------ | -- outside --

A job cancelled or timed out after submitting withdraws its prompt from
ComfyUI's queue and interrupts it if it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

from shortdrama_worker.contract import HandlerEnv, JobContext

from shortdrama_compose.collage import collage
from shortdrama_compose.comfy import ComfyClient
from shortdrama_compose.common import (
    derive_seed,
    fetch_inputs,
    instruction_for,
    png,
    safe_name,
    store_image,
)
from shortdrama_compose.model import ComposeInput, ComposeSettings, output_size
from shortdrama_compose.workflow import Workflow

REQUIRED_MARKERS = (
    "person",
    "clothing",
    "place",
    "prompt",
    "negative_prompt",
    "seed",
    "steps",
    "cfg",
    "width",
    "height",
    "filename_prefix",
    "lightning_strength",
)
PROBE_INTERVAL_S = 15.0
"""How often ComfyUI's /system_stats is probed for /ready."""
# Progress bands: transfers are short next to the sampler.
_UPLOADED, _SUBMITTED, _EXECUTED, _STORING = 5.0, 10.0, 90.0, 95.0


class ComfyBackend:
    def __init__(self, settings: ComposeSettings, env: HandlerEnv[Any]) -> None:
        self.settings = settings
        self.config = settings.comfyui
        self.env = env
        self.workflow = Workflow.load(self.config.workflow_file)
        self.workflow.require(REQUIRED_MARKERS)
        self.client = ComfyClient(
            self.config.base_url,
            env.service_http,
            request_timeout_s=self.config.request_timeout_s,
            transfer_timeout_s=self.config.transfer_timeout_s,
            poll_interval_s=self.config.poll_interval_s,
            metrics=env.metrics,
        )
        self.reachable = False
        self._probe: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        self.reachable = await self.client.healthy()
        if not self.reachable:
            # ComfyUI often starts after the worker; /ready says so until it is up.
            self.env.log.warning("comfyui_unreachable", base_url=self.config.base_url)
        self._probe = asyncio.create_task(self._probe_loop(), name=f"{self.env.kind}-probe")

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(PROBE_INTERVAL_S)
            self.reachable = await self.client.healthy()

    async def shutdown(self) -> None:
        probe, self._probe = self._probe, None
        if probe is not None:
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe

    async def healthy(self) -> bool:
        self.reachable = await self.client.healthy()
        return self.reachable

    async def run(self, params: ComposeInput, ctx: JobContext) -> dict[str, Any]:
        timings: dict[str, float] = {}
        mark = started = time.monotonic()
        inputs = await fetch_inputs(params, ctx)
        mark = _phase(ctx, timings, "fetch", mark)
        sheet, cells = await asyncio.to_thread(
            collage, inputs.clothing, cell=self.config.collage_cell
        )
        width, height = output_size(
            params.width, params.height, inputs.place.width / inputs.place.height
        )
        job = safe_name(ctx.job_id)
        sub = self.config.upload_subfolder
        encoded = await asyncio.gather(
            *(asyncio.to_thread(png, image) for image in (inputs.person, sheet, inputs.place))
        )
        names = await asyncio.gather(
            *(
                self.client.upload(data, f"{job}-{role}.png", subfolder=sub)
                for role, data in zip(("person", "clothing", "place"), encoded, strict=True)
            )
        )
        seed = params.seed if params.seed is not None else derive_seed(ctx.job_id)
        lightning = self.config.lightning
        steps = self.config.steps or (4 if lightning else 20)
        cfg = self.config.cfg if self.config.cfg is not None else (1.0 if lightning else 2.5)
        graph = self.workflow.render(
            {
                "person": names[0],
                "clothing": names[1],
                "place": names[2],
                "prompt": instruction_for(self.settings.instruction, params.prompt),
                "negative_prompt": self.config.negative_prompt,
                "seed": seed,
                "steps": steps,
                "cfg": cfg,
                "width": width,
                "height": height,
                "filename_prefix": f"{sub}/{job}" if sub else job,
                "lightning_strength": 1.0 if lightning else 0.0,
            }
        )
        mark = _phase(ctx, timings, "upload", mark)
        outputs, prompt_id = await self._execute(graph, ctx, timings)
        await ctx.progress(_EXECUTED, "downloading")
        mark = time.monotonic()
        files = await asyncio.gather(*(self.client.view(image) for image in outputs))
        mark = _phase(ctx, timings, "download", mark)
        await ctx.progress(_STORING, "storing")
        images = [await store_image(ctx, data, f"image_{i + 1}") for i, data in enumerate(files)]
        # The collage is what the model saw as "the clothing": kept for checking.
        collage_stored = await ctx.store_result(
            encoded[1], content_type="image/png", name="clothing_collage.png", primary=False
        )
        _phase(ctx, timings, "store", mark)
        timings["total"] = round(time.monotonic() - started, 4)
        return {
            "imageUrl": images[0]["url"],
            "status": "success",
            "message": "composed with ComfyUI (Qwen-Image-Edit-2509)",
            "images": images,
            "clothing_collage": collage_stored,
            "clothing_items": len(cells),
            "backend": "comfyui",
            "prompt_id": prompt_id,
            "seed": seed,
            "steps": steps,
            "cfg": cfg,
            "width": width,
            "height": height,
            "timings": timings,
        }

    async def _execute(
        self, graph: dict[str, Any], ctx: JobContext, timings: dict[str, float]
    ) -> tuple[list[Any], str]:
        prompt_id, client_id = str(uuid.uuid4()), uuid.uuid4().hex
        ws = await self.client.connect(client_id)
        await ctx.progress(_UPLOADED, "uploaded")
        reported = _SUBMITTED

        async def on_progress(fraction: float) -> None:
            nonlocal reported
            percent = round(_SUBMITTED + fraction * (_EXECUTED - _SUBMITTED), 1)
            if percent > reported:  # a second sampler restarts at 0; never go back
                reported = percent
                await ctx.progress(percent, "executing")

        submitted = done = False
        try:
            asked = time.monotonic()
            async with ctx.gpu():
                timings["gpu_wait"] = round(time.monotonic() - asked, 4)
                mark = time.monotonic()
                submitted = True  # before the call: a cancel while it is in flight withdraws too
                await self.client.submit(graph, prompt_id=prompt_id, client_id=client_id)
                await ctx.progress(_SUBMITTED, "queued")
                outputs = await self.client.wait(
                    prompt_id, graph, ws, on_progress, client_id=client_id
                )
                done = True
                _phase(ctx, timings, "execute", mark)
        finally:
            if submitted and not done:
                # Shielded: a cancelled job still takes its prompt off the GPU.
                await asyncio.shield(self.client.cancel(prompt_id))
            if ws is not None:
                await ws.close()
        self.reachable = True
        return outputs, prompt_id


def _phase(ctx: JobContext, timings: dict[str, float], name: str, since: float) -> float:
    now = time.monotonic()
    timings[name] = round(now - since, 4)
    if name not in ("fetch", "store"):  # the host's context observes those per call
        ctx.metrics.observe_phase(ctx.kind, name, now - since)
    return now
