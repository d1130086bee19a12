"""What every ComfyUI-backed handler shares: settings, start-up checks, and the run pipeline.

The pipeline keeps the GPU busy with one slot and several jobs in flight::

    fetch, upload to ComfyUI, open socket | ctx.gpu(): submit ... completion | download, store
    ------- outside the GPU slot -------- | ------ holding the slot ------- | --- outside ---

so one job's transfers overlap the next job's execution. Phase timings go to
the result (``timings``) and to ``metrics.phase_duration``. A job cancelled or
timed out while its prompt is queued or running interrupts that prompt in
ComfyUI (see ``PromptRun``) before the cancellation propagates.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from shortdrama_worker.comfy.client import ComfyClient, ComfyClientOptions
from shortdrama_worker.comfy.watch import Progress
from shortdrama_worker.comfy.workflows import Scalar, Workflow, load_workflow
from shortdrama_worker.contract import CONTRACT_VERSION, Handler, Health, JobContext, Resource

# Seeds stay below 2**53 so that JavaScript clients read the recorded seed exactly.
MAX_DERIVED_SEED = 2**53 - 1
MAX_SEED = 2**64 - 1  # KSampler's own bound
PHASES = ("fetch", "upload", "queue", "execute", "download", "store")
HOST_OBSERVED_PHASES = frozenset({"fetch", "store"})

# Progress bands: transfers before and after are short next to the sampler.
_PROGRESS_UPLOADED = 5.0
_PROGRESS_SUBMITTED = 10.0
_PROGRESS_EXECUTED = 90.0
_PROGRESS_STORING = 95.0


class ComfySettings(BaseModel):
    """``[handlers.options.<kind>]`` for ComfyUI handlers."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(
        default="http://127.0.0.1:8188",
        pattern=r"^https?://",
        description="ComfyUI's HTTP address; the WebSocket is derived from it.",
    )
    connect_timeout_s: float = Field(default=5.0, gt=0)
    request_timeout_s: float = Field(default=30.0, gt=0)
    transfer_timeout_s: float = Field(default=120.0, gt=0, description="Uploads and downloads.")
    poll_interval_s: float = Field(
        default=10.0,
        gt=0,
        description="Check /queue and /history when the WebSocket is silent this long.",
    )
    reconnect_attempts: int = Field(default=8, ge=1, le=100)
    reconnect_backoff_max_s: float = Field(default=5.0, gt=0)
    health_interval_s: float = Field(
        default=15.0, gt=0, description="How often /system_stats is probed for /ready."
    )
    workflow_dir: Path | None = Field(
        default=None,
        description="Directory of the operator's API-format templates; unset: packaged ones.",
    )
    workflow: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Template file stem; defaults to the handler's own.",
    )
    upload_subfolder: str = Field(
        default="shortdrama",
        pattern=r"^[A-Za-z0-9_-]*$",
        description="Subfolder of ComfyUI's input and output directories used for jobs.",
    )

    def client_options(self) -> ComfyClientOptions:
        return ComfyClientOptions(
            connect_timeout_s=self.connect_timeout_s,
            request_timeout_s=self.request_timeout_s,
            transfer_timeout_s=self.transfer_timeout_s,
            poll_interval_s=self.poll_interval_s,
            reconnect_attempts=self.reconnect_attempts,
            reconnect_backoff_max_s=self.reconnect_backoff_max_s,
        )


@dataclass(frozen=True)
class ImageInput:
    """An input image bound to a template marker; ``field`` names it in errors."""

    marker: str
    ref: str
    field: str


def derive_seed(job_id: str) -> int:
    """A seed fixed by the job id, so a retried job draws the same image."""
    digest = hashlib.sha256(job_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") & MAX_DERIVED_SEED


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)[:80] or "job"


def _png(image: Image.Image) -> bytes:
    if image.mode not in ("RGB", "RGBA", "L"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    buffer = io.BytesIO()
    # Level 1: the file only crosses the loopback to ComfyUI; CPU time matters more.
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


_EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp"}


class ComfyHandler(Handler[Any, ComfySettings]):
    """Base of the ComfyUI handlers: one client, one template, health and the pipeline."""

    contract_version = CONTRACT_VERSION
    resource: ClassVar[Resource] = "gpu"
    timeout_s: ClassVar[float] = 900.0
    settings_model: ClassVar[type[BaseModel]] = ComfySettings
    default_workflow: ClassVar[str] = ""
    required_markers: ClassVar[frozenset[str]] = frozenset()

    config: ComfySettings
    client: ComfyClient
    workflow: Workflow
    _probe: asyncio.Task[None] | None = None

    def load_config(self) -> ComfySettings:
        """The settings section, validated once by the host against ``settings_model``."""
        return self.settings

    async def startup(self) -> None:
        """Check the template's markers, then probe ComfyUI (being down is not fatal)."""
        self.config = self.load_config()
        self.client = ComfyClient(
            self.config.base_url,
            self.env.service_http,
            options=self.config.client_options(),
            metrics=self.env.metrics,
        )
        self.load_workflows()
        await self.start_probe()

    def load_workflows(self) -> None:
        """Load this handler's template; ``WorkflowError`` stops start-up."""
        name = self.config.workflow or self.default_workflow
        self.workflow = load_workflow(name, self.config.workflow_dir)
        self.workflow.require(sorted(self.required_markers), who=self.env.kind)

    async def start_probe(self) -> None:
        if not await self.client.healthy():
            # ComfyUI often starts after the worker; /ready says so until it is up.
            self.env.log.warning("comfyui_unreachable", base_url=self.config.base_url)
        self._probe = asyncio.create_task(self._probe_loop(), name=f"{self.env.kind}-probe")

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval_s)
            try:
                await self.client.healthy()
            except Exception as exc:  # a dead probe would freeze ready() at its last value
                self.client.reachable = False
                self.env.log.warning("comfyui_probe_failed", error=str(exc))

    async def shutdown(self) -> None:
        probe, self._probe = self._probe, None
        if probe is not None:
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe

    async def health(self) -> Mapping[str, Health]:
        return {"comfyui": "healthy" if await self.client.healthy() else "degraded"}

    def ready(self) -> bool:
        """False while the last call to ComfyUI (job or probe) failed to reach it."""
        return getattr(self, "client", None) is not None and self.client.reachable is not False

    def seed_for(self, seed: int | None, ctx: JobContext) -> int:
        return seed if seed is not None else derive_seed(ctx.job_id)

    async def execute(
        self,
        ctx: JobContext,
        workflow: Workflow,
        *,
        images: Iterable[ImageInput],
        values: Mapping[str, Scalar],
        omit: Iterable[str] = (),
    ) -> dict[str, Any]:
        """Run ``workflow`` for one job; the result dict holds images, timings, prompt id."""
        timings: dict[str, float] = {}
        started = time.monotonic()

        def phase(name: str, since: float, until: float | None = None) -> float:
            end = time.monotonic() if until is None else until
            timings[name] = round(end - since, 4)
            # The host's context already observes fetch and store per call.
            if name not in HOST_OBSERVED_PHASES:
                ctx.metrics.observe_phase(ctx.kind, name, end - since)
            return end

        image_list = list(images)
        mark = time.monotonic()
        decoded = await asyncio.gather(
            *(ctx.fetch_image(item.ref, field=item.field) for item in image_list)
        )
        mark = phase("fetch", mark)
        uploads = await asyncio.gather(
            *(
                self._upload(ctx, item, image)
                for item, image in zip(image_list, decoded, strict=True)
            )
        )
        graph_values: dict[str, Scalar] = dict(values)
        for item, upload in zip(image_list, uploads, strict=True):
            graph_values[item.marker] = upload
        if workflow.has("filename_prefix"):
            prefix = _safe_name(ctx.job_id)
            sub = self.config.upload_subfolder
            graph_values["filename_prefix"] = f"{sub}/{prefix}" if sub else prefix
        graph = workflow.render(graph_values, omit=omit)

        async with self.client.prompt_run(graph) as run:
            mark = phase("upload", mark)
            await ctx.progress(_PROGRESS_UPLOADED, "uploaded")
            reported = _PROGRESS_SUBMITTED

            async def on_progress(update: Progress) -> None:
                nonlocal reported
                percent = _PROGRESS_SUBMITTED + update.fraction * (
                    _PROGRESS_EXECUTED - _PROGRESS_SUBMITTED
                )
                if percent > reported:  # a second sampler restarts at 0; never go back
                    reported = percent
                    await ctx.progress(round(percent, 1), "executing")

            gpu_asked = time.monotonic()
            async with ctx.gpu():
                timings["gpu_wait"] = round(time.monotonic() - gpu_asked, 4)
                submit_at = time.monotonic()
                await run.submit()
                await ctx.progress(_PROGRESS_SUBMITTED, "queued")
                outputs = await run.wait(on_progress)
            done = run.finished_at or time.monotonic()
            exec_start = run.started_at or submit_at
            phase("queue", submit_at, exec_start)
            phase("execute", exec_start, done)
            reconnects, polls, prompt_id = run.reconnects, run.polls, run.prompt_id

        await ctx.progress(_PROGRESS_EXECUTED, "downloading")
        mark = time.monotonic()
        files = await asyncio.gather(*(self.client.view(image) for image in outputs))
        mark = phase("download", mark)
        await ctx.progress(_PROGRESS_STORING, "storing")
        stored = []
        for index, (image, (data, content_type)) in enumerate(zip(outputs, files, strict=True)):
            extension = _EXTENSIONS.get(content_type, Path(image.filename).suffix or ".bin")
            result = await ctx.store_result(
                data, content_type=content_type, name=f"image_{index + 1}{extension}"
            )
            stored.append(
                {
                    "url": result,
                    "key": result.key,
                    "content_type": result.content_type,
                    "size": result.size,
                    "node_id": image.node_id,
                }
            )
        phase("store", mark)
        timings["total"] = round(time.monotonic() - started, 4)
        ctx.log.info(
            "comfyui_prompt_done",
            prompt_id=prompt_id,
            images=len(stored),
            reconnects=reconnects,
            polls=polls,
            **{f"{k}_s": v for k, v in timings.items()},
        )
        return {
            "images": stored,
            "prompt_id": prompt_id,
            "workflow": workflow.name,
            "timings": timings,
        }

    async def _upload(self, ctx: JobContext, item: ImageInput, image: Image.Image) -> str:
        data = await asyncio.to_thread(_png, image)
        uploaded = await self.client.upload_image(
            data,
            f"{_safe_name(ctx.job_id)}-{item.marker}.png",
            subfolder=self.config.upload_subfolder,
            overwrite=True,
        )
        return uploaded.load_value
