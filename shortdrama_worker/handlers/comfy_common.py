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
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from shortdrama_worker.comfy.capabilities import summary
from shortdrama_worker.comfy.checks import ServerChecks, workflow_files
from shortdrama_worker.comfy.client import ComfyClient, ComfyClientOptions
from shortdrama_worker.comfy.errors import ComfyCannotRunError, ComfyUnavailableError
from shortdrama_worker.comfy.pool import ComfyServer, ServerConfig, ServerPool, pool_for
from shortdrama_worker.comfy.progress import Progress
from shortdrama_worker.comfy.protocol import OutputImage
from shortdrama_worker.comfy.watch import PromptRun
from shortdrama_worker.comfy.workflows import Scalar, Workflow, WorkflowError, load_workflow
from shortdrama_worker.contract import (
    CONTRACT_VERSION,
    Handler,
    Health,
    JobContext,
    JobError,
    Resource,
)

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


class ComfyServerSettings(BaseModel):
    """One ComfyUI of ``servers``: typically one per GPU."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(pattern=r"^https?://", description="This ComfyUI's HTTP address.")
    name: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$",
        description="Label in metrics and logs (e.g. gpu0); default: its index in the list.",
    )
    slots: int = Field(
        default=1, ge=1, le=8, description="Prompts it executes at once (one per ComfyUI process)."
    )
    queue_ahead: int | None = Field(
        default=None,
        ge=0,
        le=8,
        description="Prompts kept queued inside it beyond those executing; default: the "
        "section's queue_ahead.",
    )


class ComfySettings(BaseModel):
    """``[handlers.options.<kind>]`` for ComfyUI handlers."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(
        default="http://127.0.0.1:8188",
        pattern=r"^https?://",
        description="ComfyUI's HTTP address (one server); the WebSocket is derived from it.",
    )
    servers: list[ComfyServerSettings] = Field(
        default_factory=list,
        max_length=16,
        description="Several ComfyUI servers (one per GPU), instead of base_url.",
    )
    queue_ahead: int = Field(
        default=1,
        ge=0,
        le=8,
        description="Prompts a server keeps queued inside ComfyUI beyond those executing, so it "
        "starts the next one the moment it is free (0: submit only to a free server).",
    )
    interrupt_wait_s: float = Field(
        default=30.0,
        gt=0,
        description="After /interrupt, how long ComfyUI may take to leave the prompt before "
        "the job and the metrics say it has not (its slot stays held until it does).",
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
        default=15.0,
        gt=0,
        description="How often each server's health, node types and models are probed; "
        "also how often workflow_dir is checked for changes.",
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

    @model_validator(mode="after")
    def _one_way_to_name_servers(self) -> ComfySettings:
        if self.servers and "base_url" in self.model_fields_set:
            raise ValueError("give base_url (one server) or servers, not both")
        names = [c.name for c in self.server_configs()]
        urls = [c.base_url for c in self.server_configs()]
        if len(set(names)) != len(names) or len(set(urls)) != len(urls):
            raise ValueError("servers: each needs its own name and base_url")
        return self

    def server_configs(self) -> list[ServerConfig]:
        """``servers``, or the single ``base_url`` as server ``0``."""
        if not self.servers:
            return [ServerConfig("0", self.base_url.rstrip("/"), queue_ahead=self.queue_ahead)]
        return [
            ServerConfig(
                s.name or str(index),
                s.base_url.rstrip("/"),
                s.slots,
                self.queue_ahead if s.queue_ahead is None else s.queue_ahead,
            )
            for index, s in enumerate(self.servers)
        ]

    def client_options(self) -> ComfyClientOptions:
        return ComfyClientOptions(
            connect_timeout_s=self.connect_timeout_s,
            request_timeout_s=self.request_timeout_s,
            transfer_timeout_s=self.transfer_timeout_s,
            poll_interval_s=self.poll_interval_s,
            reconnect_attempts=self.reconnect_attempts,
            reconnect_backoff_max_s=self.reconnect_backoff_max_s,
            interrupt_wait_s=self.interrupt_wait_s,
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
    """Base of the ComfyUI handlers: servers, templates, health and the pipeline."""

    contract_version = CONTRACT_VERSION
    resource: ClassVar[Resource] = "gpu"
    timeout_s: ClassVar[float] = 900.0
    settings_model: ClassVar[type[BaseModel]] = ComfySettings
    default_workflow: ClassVar[str] = ""
    required_markers: ClassVar[frozenset[str]] = frozenset()
    cannot_run_error: ClassVar[type[JobError]] = ComfyCannotRunError
    """Raised for a job no server can run; this handler's jobs are held meanwhile."""

    config: ComfySettings
    workflow: Workflow
    pool: ServerPool
    servers: list[ComfyServer]
    checks: ServerChecks
    _watch: asyncio.Task[None] | None = None

    @property
    def client(self) -> ComfyClient:
        """The first server's client (the only one with a single ``base_url``)."""
        return self.servers[0].client

    def load_config(self) -> ComfySettings:
        """The settings section, validated once by the host against ``settings_model``."""
        return self.settings

    async def startup(self) -> None:
        """Check the templates' markers, then what each server can run (being down is not fatal)."""
        self.config = self.load_config()
        # Taken with the load, so an edit made while start-up goes on is not missed.
        files = workflow_files(self.config.workflow_dir)
        self.load_workflows()
        self.pool = pool_for(self.env.service_http)
        self.servers = self.pool.attach(
            self.config.server_configs(),
            http=self.env.service_http,
            options=self.config.client_options(),
            metrics=self.env.metrics,
            interval_s=self.config.health_interval_s,
            log=self.env.log,
        )
        self.checks = ServerChecks(self.env.kind, self.templates, self.env.metrics, self.env.log)
        await self.checks.refresh(self.servers)
        self.ready()  # logs what each server lacks, at start-up rather than at the first job
        self._reload = asyncio.Event()
        self.pool.on_reload(self._reload.set)
        self._watch = asyncio.create_task(
            self._watch_workflows(files), name=f"{self.env.kind}-flows"
        )

    def templates(self) -> Mapping[str, Workflow]:
        """Every template this handler may run, by name (checked against each server)."""
        return {self.workflow.name: self.workflow}

    def load_workflows(self, *, reload: bool = False) -> None:
        """Load this handler's template; ``WorkflowError`` stops start-up (or a reload)."""
        name = self.config.workflow or self.default_workflow
        workflow = load_workflow(name, self.config.workflow_dir)
        workflow.require(sorted(self.required_markers), who=self.env.kind)
        self.workflow = workflow

    async def _watch_workflows(self, seen: tuple[tuple[str, int, int], ...]) -> None:
        """Reload the templates when their files change, or on SIGHUP."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reload.wait(), self.config.health_interval_s)
            requested = self._reload.is_set()
            self._reload.clear()
            now = workflow_files(self.config.workflow_dir)
            if not requested and now == seen:
                continue
            seen = now
            # Read before the load, as above: an edit after it is seen next time.
            try:
                self.load_workflows(reload=True)
            except WorkflowError as exc:
                # The old templates stay: a half-saved file must not stop the kind.
                self.env.log.error("comfy_workflows_reload_failed", error=str(exc), kept="previous")
                continue
            except Exception:
                self.env.log.exception("comfy_workflows_reload_crashed", kept="previous")
                continue
            self.env.log.info("comfy_workflows_reloaded", templates=sorted(self.templates()))
            self.checks.invalidate()
            await self.checks.refresh(self.servers, force=True)
            self.ready()

    async def shutdown(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        if getattr(self, "servers", None):
            await self.pool.detach(self.servers)

    async def health(self) -> Mapping[str, Health]:
        """``comfyui``: degraded while a server is down or lacks what a template needs."""
        await asyncio.gather(*(s.refresh(max_age_s=1.0) for s in self.servers))
        return {"comfyui": "healthy" if not self.checks.problems(self.servers) else "degraded"}

    def explain(self) -> Mapping[str, str]:
        """What ``health``/``ready`` found wrong, in words (shown on /health and /ready)."""
        problems = self.checks.problems(self.servers)
        return {"comfyui": "; ".join(problems)} if problems else {}

    def ready(self) -> bool:
        """Whether some server that is up can run one of this handler's templates."""
        names = list(self.templates())
        if not names:
            return any(s.up for s in self.servers)
        return any(
            s.up and any(n not in self.checks.missing_on(s) for n in names) for s in self.servers
        )

    def seed_for(self, seed: int | None, ctx: JobContext) -> int:
        return seed if seed is not None else derive_seed(ctx.job_id)

    async def _where(self, workflow: Workflow) -> tuple[ComfyServer, Callable[[ComfyServer], bool]]:
        """The server to upload to, and the test of the servers that may run ``workflow``."""

        def can_run(server: ComfyServer) -> bool:
            return workflow.name not in self.checks.missing_on(server)

        target = self.pool.pick(self.servers, can_run)
        if target is None:
            # The probe may lag a server that just came back.
            await asyncio.gather(*(s.refresh(max_age_s=1.0) for s in self.servers if not s.up))
            target = self.pool.pick(self.servers, can_run)
        if target is not None:
            return target, can_run
        down = [s for s in self.servers if not s.up]
        if down:
            raise ComfyUnavailableError(
                "ComfyUI unreachable: "
                + "; ".join(f"{s.name} ({s.base_url}): {s.client.last_error}" for s in down)
            )
        lacks = self.checks.missing_on(self.servers[0]).get(workflow.name, [])
        raise self.cannot_run_error(
            f"no ComfyUI server can run workflow {workflow.name!r}: missing {summary(lacks)}"
        )

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

        # Refused before anything is fetched or uploaded.
        target, can_run = await self._where(workflow)
        try:
            graph, pngs, image_list = await self._prepare(
                ctx, workflow, target, images, values, omit, phase
            )
        except BaseException:
            self.pool.unpick(target)
            raise
        # Visible while the job waits for a free server, however short the wait.
        await ctx.progress(_PROGRESS_UPLOADED, "queued")

        gpu_asked = time.monotonic()
        async with self.pool.lease(self.servers, can_run, prefer=target) as lease:
            server = lease.server
            if server is not target:
                # Another able server freed first: it gets the inputs too.
                await self._upload_all(ctx, server, image_list, pngs)
            report = self._withdraw_report(ctx, server)
            run = server.client.prompt_run(graph, on_withdraw=report)
            try:
                # The gate is taken once the prompt is queued, but let go only after the
                # run's exit, which waits for ComfyUI to leave a withdrawn prompt.
                async with contextlib.AsyncExitStack() as gate, run:
                    if not lease.queued:  # ComfyUI starts it at once: the gate comes first
                        await gate.enter_async_context(ctx.gpu())
                        timings["gpu_wait"] = round(time.monotonic() - gpu_asked, 4)
                    submit_at = time.monotonic()
                    await run.submit()
                    await ctx.progress(_PROGRESS_SUBMITTED, "submitted")
                    late_gate = gate if lease.queued else None
                    outputs = await self._follow(ctx, run, late_gate, gpu_asked, timings)
            finally:
                lease.executing(run.started_at)
                if run.withdrawal is not None and not run.withdrawal.done():
                    lease.keep_until(run.withdrawal)  # ComfyUI still on it: slot stays held
            done = run.finished_at or time.monotonic()
            exec_start = run.started_at or submit_at
            phase("queue", submit_at, exec_start)
            phase("execute", exec_start, done)

        await ctx.progress(_PROGRESS_EXECUTED, "downloading")
        mark = time.monotonic()
        files = await asyncio.gather(*(server.client.view(image) for image in outputs))
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
            prompt_id=run.prompt_id,
            server=server.name,
            images=len(stored),
            reconnects=run.reconnects,
            polls=run.polls,
            **{f"{k}_s": v for k, v in timings.items()},
        )
        return {
            "images": stored,
            "prompt_id": run.prompt_id,
            "workflow": workflow.name,
            "server": server.name,
            "timings": timings,
        }

    async def _follow(
        self,
        ctx: JobContext,
        run: PromptRun,
        late_gate: contextlib.AsyncExitStack | None,
        asked: float,
        timings: dict[str, float],
    ) -> list[OutputImage]:
        """Follow a submitted prompt to its end, holding the GPU gate while it executes.

        A prompt queued inside ComfyUI behind another job's (``queue_ahead``) takes
        the gate only now (into ``late_gate``), when the job ahead has let it go; its
        socket is read from the start all the same, so ``execution_start`` is seen
        when it happens.
        """
        following = asyncio.ensure_future(run.wait(self._progress_report(ctx)))
        try:
            if late_gate is not None:
                await late_gate.enter_async_context(ctx.gpu())
                timings["gpu_wait"] = round(time.monotonic() - asked, 4)
            return await following
        finally:
            # Left early (cancelled, timed out): stop reading before the run withdraws
            # the prompt, and collect the follower's own end, which is not news.
            following.cancel()
            await asyncio.gather(following, return_exceptions=True)

    async def _prepare(
        self,
        ctx: JobContext,
        workflow: Workflow,
        target: ComfyServer,
        images: Iterable[ImageInput],
        values: Mapping[str, Scalar],
        omit: Iterable[str],
        phase: Callable[[str, float], float],
    ) -> tuple[dict[str, Any], list[bytes], list[ImageInput]]:
        """Fetch the inputs, upload them to ``target``, render the graph (outside any slot)."""
        image_list = list(images)
        mark = time.monotonic()
        decoded = await asyncio.gather(
            *(ctx.fetch_image(item.ref, field=item.field) for item in image_list)
        )
        mark = phase("fetch", mark)
        pngs = list(await asyncio.gather(*(asyncio.to_thread(_png, image) for image in decoded)))
        uploads = await self._upload_all(ctx, target, image_list, pngs)
        graph_values: dict[str, Scalar] = dict(values)
        for item, upload in zip(image_list, uploads, strict=True):
            graph_values[item.marker] = upload
        if workflow.has("filename_prefix"):
            prefix = _safe_name(ctx.job_id)
            sub = self.config.upload_subfolder
            graph_values["filename_prefix"] = f"{sub}/{prefix}" if sub else prefix
        graph = workflow.render(graph_values, omit=omit)
        phase("upload", mark)
        return graph, pngs, image_list

    @staticmethod
    def _progress_report(ctx: JobContext) -> Callable[[Progress], Awaitable[None]]:
        reported = _PROGRESS_SUBMITTED

        async def on_progress(update: Progress) -> None:
            nonlocal reported
            span = _PROGRESS_EXECUTED - _PROGRESS_SUBMITTED
            percent = round(_PROGRESS_SUBMITTED + update.fraction * span, 1)
            if percent > reported:  # never back, whatever the events say
                reported = percent
                await ctx.progress(percent, "executing")

        return on_progress

    def _withdraw_report(
        self, ctx: JobContext, server: ComfyServer
    ) -> Callable[[str], Awaitable[None]]:
        # A built-in handler: the host's Metrics, with the per-server ComfyUI series.
        metrics: Any = self.env.metrics
        stuck = False

        async def on_withdraw(outcome: str) -> None:
            nonlocal stuck
            if outcome == "stuck":
                stuck = True
                if metrics is not None:
                    metrics.comfy_unhonoured.labels(server.name).inc()
                await ctx.progress(
                    _PROGRESS_SUBMITTED,
                    f"interrupt_pending: ComfyUI {server.name} still runs the prompt "
                    f"{self.config.interrupt_wait_s:g} s after /interrupt; its GPU stays busy",
                )
                return
            if metrics is not None:
                if stuck:
                    metrics.comfy_unhonoured.labels(server.name).dec()
                metrics.comfy_interrupts.labels(server.name, outcome).inc()

        return on_withdraw

    async def _upload_all(
        self, ctx: JobContext, server: ComfyServer, items: list[ImageInput], pngs: list[bytes]
    ) -> list[str]:
        return list(
            await asyncio.gather(
                *(self._upload(ctx, server, i, p) for i, p in zip(items, pngs, strict=True))
            )
        )

    async def _upload(
        self, ctx: JobContext, server: ComfyServer, item: ImageInput, data: bytes
    ) -> str:
        uploaded = await server.client.upload_image(
            data,
            f"{_safe_name(ctx.job_id)}-{item.marker}.png",
            subfolder=self.config.upload_subfolder,
            overwrite=True,
        )
        return uploaded.load_value
