"""The SageMaker back end at the job level: stage, render the body, invoke, store.

Each clothing item is sent on its own (the seed's endpoint took a list); a
template may ask for the collage instead (``$clothing_collage``) for a model
that takes one garment image.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from shortdrama_worker.contract import HandlerEnv, JobContext

from shortdrama_compose.aws import Clients, open_clients
from shortdrama_compose.check import Finding, check, problems
from shortdrama_compose.collage import collage
from shortdrama_compose.common import (
    derive_seed,
    fetch_inputs,
    instruction_for,
    png,
    safe_name,
    store_image,
)
from shortdrama_compose.model import ComposeInput, ComposeSettings, SageMakerSettings
from shortdrama_compose.sagemaker import Invoker
from shortdrama_compose.template import load_template, markers_in, render


class SageMakerBackend:
    def __init__(self, settings: ComposeSettings, env: HandlerEnv[Any]) -> None:
        assert settings.sagemaker is not None  # the settings model makes sure
        self.settings = settings
        self.config: SageMakerSettings = settings.sagemaker
        self.env = env
        self.template = load_template(
            self.config.request_template, self.config.request_template_file
        )
        self.markers = markers_in(self.template)
        self.findings: list[Finding] = []
        self._checked_at = 0.0
        self._stack = contextlib.AsyncExitStack()
        self.clients: Clients
        self.invoker: Invoker

    async def startup(self) -> None:
        self.clients = await self._stack.enter_async_context(open_clients(self.config))
        self.invoker = Invoker(self.config, self.clients, self.env.service_http, self.env.metrics)
        await self.recheck()
        for finding in self.findings:
            if not finding.ok:
                # Not fatal: the endpoint may be InService by the time jobs come.
                self.env.log.warning("sagemaker_check", finding=str(finding))

    async def shutdown(self) -> None:
        await self._stack.aclose()

    async def recheck(self) -> list[Finding]:
        self.findings = await check(self.config, self.clients)
        self._checked_at = time.monotonic()
        return self.findings

    async def healthy(self) -> bool:
        if time.monotonic() - self._checked_at > self.config.check_interval_s:
            await self.recheck()
        return self.ready()

    def ready(self) -> bool:
        return self._checked_at > 0 and not problems(self.findings)

    async def run(self, params: ComposeInput, ctx: JobContext) -> dict[str, Any]:
        timings: dict[str, float] = {}
        started = mark = time.monotonic()
        inputs = await fetch_inputs(params, ctx)
        timings["fetch"] = round(time.monotonic() - mark, 4)
        await ctx.progress(5, "fetched")
        mark = time.monotonic()
        key = f"{self.config.prefix}/inputs/{safe_name(ctx.job_id)}"
        images: dict[str, Any] = {}

        async def stage(name: str, image: Any) -> str:
            data = await asyncio.to_thread(png, image, compress_level=6)
            return await self.invoker.image_value(data, f"{key}/{name}.png")

        staged = await asyncio.gather(
            stage("person", inputs.person),
            stage("place", inputs.place),
            *(stage(f"clothing_{i}", image) for i, image in enumerate(inputs.clothing)),
        )
        images = {"person_image": staged[0], "place_image": staged[1]}
        images["clothing_images"] = list(staged[2:])
        if "clothing_collage" in self.markers:
            sheet, _ = await asyncio.to_thread(collage, inputs.clothing)
            images["clothing_collage"] = await stage("clothing_collage", sheet)
        seed = params.seed if params.seed is not None else derive_seed(ctx.job_id)
        body = json.dumps(
            render(
                self.template,
                {
                    **images,
                    "prompt": params.prompt,
                    "instruction": instruction_for(self.settings.instruction, params.prompt),
                    "seed": seed,
                    "width": params.width,
                    "height": params.height,
                    "job_id": ctx.job_id,
                },
            )
        ).encode()
        timings["stage"] = round(time.monotonic() - mark, 4)
        ctx.metrics.observe_phase(ctx.kind, "stage", time.monotonic() - mark)
        await ctx.progress(10, "staged")
        mark = time.monotonic()
        answer, content_type, info = await self.invoker.invoke(body, ctx)
        image = await self.invoker.image_from(answer, content_type)
        timings["execute"] = round(time.monotonic() - mark, 4)
        ctx.metrics.observe_phase(ctx.kind, "execute", time.monotonic() - mark)
        await ctx.progress(95, "storing")
        stored = await store_image(ctx, image, "image_1")
        timings["total"] = round(time.monotonic() - started, 4)
        given = {"seed": params.seed, "width": params.width, "height": params.height}
        ignored = [n for n, v in given.items() if v is not None and n not in self.markers]
        if params.prompt and not self.markers & {"prompt", "instruction"}:
            ignored.insert(0, "prompt")
        return {
            "imageUrl": stored["url"],
            "status": "success",
            "message": f"composed by SageMaker endpoint {info['endpoint']}",
            "images": [stored],
            "backend": "sagemaker",
            **info,
            "request_bytes": len(body),
            "seed": seed,
            "clothing_items": len(inputs.clothing),
            # Inputs the configured request template has no place for.
            "ignored_inputs": ignored,
            "timings": timings,
        }
