"""ComfyUI in production: capabilities, node progress, truthful cancel, several servers, reloads.

Handlers run against fake ComfyUIs (``tests/fakes/comfyui.py``) over real HTTP
and WebSocket; the daemon-level tests go through the real application on moto.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fakes.comfyui import NODE_SPECS, PACKAGED_MODELS, FakeComfyUI, Script, png_bytes
from support import submit, wait_for

from shortdrama_worker.comfy.errors import ComfyCannotRunError, ComfyWorkflowCannotRunError
from shortdrama_worker.comfy.workflows import packaged_workflow_dir
from shortdrama_worker.contract import Handler
from shortdrama_worker.contract.errors import TransientJobError
from shortdrama_worker.contract.testing import FakeJobContext, GpuGate, data_uri, make_env
from shortdrama_worker.handlers.camera_angle import CameraAngleHandler, CameraAngleInput
from shortdrama_worker.handlers.comfy_common import ComfySettings
from shortdrama_worker.handlers.comfy_workflow import (
    ComfyWorkflowHandler,
    ComfyWorkflowInput,
    ComfyWorkflowSettings,
)
from shortdrama_worker.handlers.qwen_edit import QwenEditHandler, QwenEditInput
from shortdrama_worker.metrics import Metrics

IMAGE = data_uri(png_bytes(7, size=(80, 60)))
FAST = {
    "poll_interval_s": 0.5,
    "reconnect_attempts": 2,
    "reconnect_backoff_max_s": 0.1,
    "health_interval_s": 0.1,
}
CAMERA = CameraAngleInput(image=IMAGE, move="close_up")
NO_MODELS: dict[str, list[str]] = {}


class LogRecorder:
    """A logger that keeps (level, event, fields); handlers log through ``env.log``."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def bind(self, **_: Any) -> LogRecorder:
        return self

    def _add(self, level: str, event: str, fields: dict[str, Any]) -> None:
        self.lines.append((level, event, fields))

    def debug(self, event: str, **fields: Any) -> None:
        self._add("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._add("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._add("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._add("error", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        self._add("exception", event, fields)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [fields for _, event, fields in self.lines if event == name]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def logs() -> LogRecorder:
    return LogRecorder()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
async def make_handler(
    http: aiohttp.ClientSession, logs: LogRecorder, metrics: Metrics
) -> AsyncIterator[Callable[..., Any]]:
    started: list[Handler] = []

    async def make(cls: type[Handler], kind: str, settings: Any) -> Any:
        env = make_env(cls, settings, kind=kind, service_http=http, metrics=metrics)
        handler = cls(replace(env, log=logs))
        await handler.startup()
        started.append(handler)
        return handler

    yield make
    for handler in started:
        await handler.shutdown()


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Until ``check()`` holds (background probes run every 0.1 s here)."""
    for _ in range(int(timeout / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    assert check(), "not within the time limit"


def _sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def _context(http: aiohttp.ClientSession, kind: str, job_id: str = "job-1", **kw: Any) -> Any:
    return FakeJobContext(job_id=job_id, kind=kind, http=http, **kw)


def _node(class_type: str, title: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs, "_meta": {"title": title}}


def _invert_graph() -> dict[str, Any]:
    """A graph with no sampler and no model: progress must still move."""
    scale = {"upscale_method": "area", "width": 0, "height": 0, "crop": "disabled"}
    return {
        "1": _node("LoadImage", "$photo:image", image="x.png"),
        "2": _node("ImageScale", "$width $height", image=["1", 0], **scale),
        "3": _node("ImageInvert", "Invert", image=["2", 0]),
        "4": _node("SaveImage", "$filename_prefix", images=["3", 0], filename_prefix="inv"),
    }


def _template(name: str) -> dict[str, Any]:
    graph: dict[str, Any] = json.loads(
        (packaged_workflow_dir() / f"{name}.json").read_text(encoding="utf-8")
    )
    return graph


# --- 1. capabilities ---------------------------------------------------------------------


async def test_comfyui_without_models_is_named_on_health_and_holds_the_kind_until_installed(
    http: aiohttp.ClientSession, make_handler: Callable[..., Any], logs: LogRecorder
) -> None:
    async with FakeComfyUI(models=NO_MODELS) as comfy:
        handler = await make_handler(
            CameraAngleHandler, "comfy_camera_angle", ComfySettings(base_url=comfy.url, **FAST)
        )
        assert handler.ready() is False  # its jobs are held, not consumed
        assert await handler.health() == {"comfyui": "degraded"}
        why = handler.explain()["comfyui"]
        for folder, files in PACKAGED_MODELS.items():
            for name in files:
                assert f"model file {name} in models/{folder}" in why
        assert 'node 3 VAELoader "Qwen-Image VAE"' in why
        (line,) = logs.events("comfyui_cannot_run")  # logged at start-up, once
        assert "qwen_image_vae.safetensors" in line["missing"]

        # A job that gets here anyway is refused before any fetch or upload.
        ctx = _context(http, "comfy_camera_angle")
        with pytest.raises(ComfyCannotRunError, match=r"qwen_image_vae\.safetensors"):
            await handler.run(CAMERA, ctx)
        assert not [p for _, p, _ in comfy.requests if p == "/upload/image"]
        assert ctx.gate.held == []

        # The operator installs the files: the probe notices, the kind runs.
        comfy.models.update({k: list(v) for k, v in PACKAGED_MODELS.items()})
        await eventually(handler.ready)
        assert await handler.health() == {"comfyui": "healthy"} and handler.explain() == {}
        assert logs.events("comfyui_can_run")
        result = await handler.run(CAMERA, _context(http, "comfy_camera_angle"))
        assert len(result["images"]) == 1


async def test_missing_node_type_is_named_with_the_node_that_needs_it(
    make_handler: Callable[..., Any],
) -> None:
    async with FakeComfyUI(nodes=set(NODE_SPECS) - {"CFGNorm"}) as comfy:
        handler = await make_handler(
            QwenEditHandler, "qwen_edit", ComfySettings(base_url=comfy.url, **FAST)
        )
        assert handler.ready() is False
        assert (
            'node type CFGNorm (not installed) (node 6 CFGNorm "CFGNorm")'
            in (handler.explain()["comfyui"])
        )


async def test_operator_workflow_lacking_a_model_is_refused_while_the_others_run(
    http: aiohttp.ClientSession, make_handler: Callable[..., Any], tmp_path: Path
) -> None:
    (tmp_path / "invert.json").write_text(json.dumps(_invert_graph()), encoding="utf-8")
    (tmp_path / "edit.json").write_text(json.dumps(_template("qwen_edit")), encoding="utf-8")
    async with FakeComfyUI(models=NO_MODELS) as comfy:
        settings = ComfyWorkflowSettings(
            base_url=comfy.url, enabled=True, workflow_dir=tmp_path, **FAST
        )
        handler = await make_handler(ComfyWorkflowHandler, "comfy_workflow", settings)
        assert handler.ready() is True  # "invert" needs no model
        assert "workflow edit: missing model file" in handler.explain()["comfyui"]
        edit = ComfyWorkflowInput(workflow="edit", images={"image1": IMAGE}, values={"prompt": "x"})
        with pytest.raises(ComfyWorkflowCannotRunError, match=r"qwen_image_vae\.safetensors"):
            await handler.run(edit, _context(http, "comfy_workflow"))
        assert not [p for _, p, _ in comfy.requests if p == "/upload/image"]
        invert = ComfyWorkflowInput(workflow="invert", images={"photo": IMAGE})
        result = await handler.run(invert, _context(http, "comfy_workflow", "j2"))
        assert len(result["images"]) == 1


def test_object_info_combo_shapes_of_classic_and_v3_nodes_are_both_read() -> None:
    from shortdrama_worker.comfy.capabilities import combo_options

    assert combo_options([["a.safetensors", "b.safetensors"], {}]) == [
        "a.safetensors",
        "b.safetensors",
    ]
    assert combo_options(["COMBO", {"options": ["x.gguf"], "multiselect": False}]) == ["x.gguf"]
    assert combo_options(["INT", {"min": 0}]) is None


# --- 2. progress ---------------------------------------------------------------------------


async def test_progress_moves_node_by_node_in_a_graph_without_a_sampler(
    http: aiohttp.ClientSession, make_handler: Callable[..., Any], tmp_path: Path
) -> None:
    (tmp_path / "invert.json").write_text(json.dumps(_invert_graph()), encoding="utf-8")
    async with FakeComfyUI(default=Script(exec_s=0.4)) as comfy:
        settings = ComfyWorkflowSettings(
            base_url=comfy.url, enabled=True, workflow_dir=tmp_path, **FAST
        )
        handler = await make_handler(ComfyWorkflowHandler, "comfy_workflow", settings)
        ctx = _context(http, "comfy_workflow")
        await handler.run(ComfyWorkflowInput(workflow="invert", images={"photo": IMAGE}), ctx)
    stages = [stage for _, stage in ctx.progress_reports]
    assert stages[:2] == ["queued", "submitted"]
    executing = [p for p, stage in ctx.progress_reports if stage == "executing"]
    # Four nodes, each reported by its own events: 30, 50, 70, 90 %.
    assert executing == [30.0, 50.0, 70.0, 90.0]
    percents = [p for p, _ in ctx.progress_reports]
    assert percents == sorted(percents)


async def test_queued_stage_shows_while_the_job_waits_for_the_server(
    http: aiohttp.ClientSession, make_handler: Callable[..., Any]
) -> None:
    async with FakeComfyUI() as comfy:
        settings = ComfySettings(base_url=comfy.url, queue_ahead=0, **FAST)
        handler = await make_handler(CameraAngleHandler, "comfy_camera_angle", settings)
        comfy.scripts.extend([Script(exec_s=1.0), Script(exec_s=0.1)])
        first = _context(http, "comfy_camera_angle", "job-a")
        second = _context(http, "comfy_camera_angle", "job-b")
        running = asyncio.create_task(handler.run(CAMERA, first))
        await comfy.wait_running()
        waiting = asyncio.create_task(handler.run(CAMERA, second))
        await eventually(lambda: bool(second.progress_reports))
        assert second.progress_reports == [(5.0, "queued")]
        assert len(comfy.submitted) == 1  # it waits here, not in ComfyUI's queue
        await asyncio.gather(running, waiting)


async def test_the_next_prompt_waits_inside_comfyui_so_it_starts_the_moment_the_gpu_is_free(
    http: aiohttp.ClientSession, make_handler: Callable[..., Any], metrics: Metrics
) -> None:
    async with FakeComfyUI(default=Script(exec_s=0.6)) as comfy:
        handler = await make_handler(
            CameraAngleHandler, "comfy_camera_angle", ComfySettings(base_url=comfy.url, **FAST)
        )
        gate = GpuGate(slots=1)
        contexts = [_context(http, "comfy_camera_angle", f"job-{i}", gate=gate) for i in "abc"]
        first = asyncio.create_task(handler.run(CAMERA, contexts[0]))
        await comfy.wait_running()
        # One prompt queued ahead (the default): the second job's waits in ComfyUI's
        # queue, the third job waits here for a place.
        rest = [asyncio.create_task(handler.run(CAMERA, contexts[1]))]
        await comfy.wait_pending(1)
        await eventually(lambda: len(contexts[1].progress_reports) == 2)
        assert [s for _, s in contexts[1].progress_reports] == ["queued", "submitted"]
        rest.append(asyncio.create_task(handler.run(CAMERA, contexts[2])))
        await eventually(lambda: bool(contexts[2].progress_reports))
        assert contexts[2].progress_reports == [(5.0, "queued")]
        assert len(comfy.submitted) == 2 and gate.held == []
        await asyncio.gather(first, *rest)

    a, b, c = comfy.executions
    prompts = [t for m, p, t in comfy.requests if p == "/prompt" and m == "POST"]
    assert prompts[1] < a.ended  # ComfyUI had the next prompt before the first one ended
    assert b.started >= a.ended and c.started >= b.ended  # still one at a time
    # The gate is held by one job at a time, each while its own prompt executes.
    spans = sorted(gate.held)
    assert all(end <= start for (_, end), (start, _) in itertools.pairwise(spans))
    assert spans[1][0] >= a.ended
    # Busy seconds count execution, not time spent queued behind another prompt.
    busy = _sample(metrics, "shortdrama_comfyui_busy_seconds_total", server="0")
    assert busy <= (c.ended - a.started) + 0.3
    assert _sample(metrics, "shortdrama_comfyui_slots_in_use", server="0") == 0


@pytest.mark.parametrize("how", ["cancelled", "timed out"])
async def test_a_job_whose_prompt_is_queued_ahead_withdraws_it_and_leaves_the_running_one(
    how: str, http: aiohttp.ClientSession, make_handler: Callable[..., Any], metrics: Metrics
) -> None:
    async with FakeComfyUI() as comfy:
        handler = await make_handler(
            CameraAngleHandler, "comfy_camera_angle", ComfySettings(base_url=comfy.url, **FAST)
        )
        comfy.scripts.extend([Script(exec_s=1.0), Script(exec_s=0.1)])
        gate = GpuGate(slots=1)
        ahead = _context(http, "comfy_camera_angle", "job-a", gate=gate)
        queued = _context(http, "comfy_camera_angle", "job-b", gate=gate)
        running = asyncio.create_task(handler.run(CAMERA, ahead))
        first_id = await comfy.wait_running()
        waiting = asyncio.create_task(
            asyncio.wait_for(handler.run(CAMERA, queued), 0.4 if how == "timed out" else 30)
        )
        (queued_id,) = await comfy.wait_pending(1)
        if how == "cancelled":
            waiting.cancel()
        with pytest.raises((asyncio.CancelledError, TimeoutError)):
            await waiting
        assert comfy.pending_prompt_ids == []  # taken off ComfyUI's queue
        assert comfy.interrupts == [queued_id]  # an interrupt for its own prompt id only
        assert gate.held == []  # it never took the GPU: the first job still holds it
        result = await running
        assert result["prompt_id"] == first_id
    assert [e.prompt_id for e in comfy.executions] == [first_id]
    assert comfy.executions[0].status == "success"
    assert _sample(metrics, "shortdrama_comfyui_slots_in_use", server="0") == 0


async def test_with_queue_ahead_a_comfyui_crash_fails_both_its_jobs_for_a_retry(
    http: aiohttp.ClientSession, make_handler: Callable[..., Any]
) -> None:
    async with FakeComfyUI() as comfy:
        handler = await make_handler(
            CameraAngleHandler, "comfy_camera_angle", ComfySettings(base_url=comfy.url, **FAST)
        )
        comfy.scripts.append(Script(exec_s=5.0))
        gate = GpuGate(slots=1)
        jobs = [
            asyncio.create_task(handler.run(CAMERA, _context(http, "k", job, gate=gate)))
            for job in ("a", "b")
        ]
        await comfy.wait_running()
        await comfy.wait_pending(1)
        await comfy.stop(lose_state=True)
        for job in jobs:  # neither hangs, neither is lost: the runner retries both
            with pytest.raises(TransientJobError):
                await job


# --- 3. cancel -----------------------------------------------------------------------------


async def test_cancel_of_a_prompt_that_ignores_interrupts_keeps_the_slot_and_says_so(
    http: aiohttp.ClientSession,
    make_handler: Callable[..., Any],
    logs: LogRecorder,
    metrics: Metrics,
) -> None:
    async with FakeComfyUI() as comfy:
        settings = ComfySettings(base_url=comfy.url, interrupt_wait_s=0.3, **FAST)
        handler = await make_handler(CameraAngleHandler, "comfy_camera_angle", settings)
        comfy.scripts.append(Script(exec_s=2.0, uninterruptible=True))
        ctx = _context(http, "comfy_camera_angle")
        task = asyncio.create_task(handler.run(CAMERA, ctx))
        prompt_id = await comfy.wait_running()
        await comfy.wait_node("13")  # the sampler, which never looks at the interrupt flag
        task.cancel()
        # Not cancelled yet: ComfyUI is still computing; the job and the metric say so.
        await eventually(lambda: bool(logs.events("comfyui_interrupt_not_honoured")))
        assert not task.done()
        assert ctx.progress_reports[-1][1].startswith("interrupt_pending")
        assert _sample(metrics, "shortdrama_comfyui_unhonoured_interrupts", server="0") == 1
        assert _sample(metrics, "shortdrama_comfyui_slots_in_use", server="0") == 1
        assert logs.events("comfyui_interrupt_sent")[0]["prompt_id"] == prompt_id

        with pytest.raises(asyncio.CancelledError):
            await task
        execution = comfy.executions[-1]
        assert execution.status == "interrupted"
        # The slot was held until ComfyUI let go of the prompt.
        assert ctx.gate.held[0][1] >= execution.ended
        assert _sample(metrics, "shortdrama_comfyui_unhonoured_interrupts", server="0") == 0
        assert _sample(metrics, "shortdrama_comfyui_interrupts_total", server="0", outcome="late")
        assert logs.events("comfyui_prompt_left")[0]["outcome"] == "late"


async def test_a_job_cut_short_leaves_the_server_slot_held_until_comfyui_lets_go(
    http: aiohttp.ClientSession, make_handler: Callable[..., Any]
) -> None:
    async with FakeComfyUI() as comfy:
        settings = ComfySettings(base_url=comfy.url, interrupt_wait_s=0.2, **FAST)
        handler = await make_handler(CameraAngleHandler, "comfy_camera_angle", settings)
        comfy.scripts.extend([Script(exec_s=1.5, uninterruptible=True), Script(exec_s=0.1)])
        task = asyncio.create_task(handler.run(CAMERA, _context(http, "comfy_camera_angle")))
        await comfy.wait_running()
        await comfy.wait_node("13")
        task.cancel()
        await asyncio.sleep(0.1)
        task.cancel()  # e.g. shutdown: the job stops waiting, the slot does not
        with pytest.raises(asyncio.CancelledError):
            await task
        await handler.run(CAMERA, _context(http, "comfy_camera_angle", "job-2"))
        first, second = comfy.executions
        assert first.status == "interrupted" and second.started >= first.ended


async def test_honoured_interrupt_is_counted_and_logged(
    http: aiohttp.ClientSession,
    make_handler: Callable[..., Any],
    logs: LogRecorder,
    metrics: Metrics,
) -> None:
    async with FakeComfyUI() as comfy:
        handler = await make_handler(
            CameraAngleHandler, "comfy_camera_angle", ComfySettings(base_url=comfy.url, **FAST)
        )
        comfy.scripts.append(Script(exec_s=5.0))
        task = asyncio.create_task(handler.run(CAMERA, _context(http, "comfy_camera_angle")))
        prompt_id = await comfy.wait_running()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert [line["prompt_id"] for line in logs.events("comfyui_interrupt_sent")] == [prompt_id]
        assert _sample(
            metrics, "shortdrama_comfyui_interrupts_total", server="0", outcome="honoured"
        )
        assert not logs.events("comfyui_interrupt_not_honoured")


# --- 4. several servers ---------------------------------------------------------------------


def _servers(*fakes: FakeComfyUI) -> list[dict[str, Any]]:
    return [{"name": f"gpu{i}", "base_url": fake.url} for i, fake in enumerate(fakes)]


async def test_two_servers_share_a_mixed_load_one_prompt_each_at_a_time(
    http: aiohttp.ClientSession, make_handler: Callable[..., Any], metrics: Metrics
) -> None:
    async with (
        FakeComfyUI(default=Script(exec_s=0.3)) as gpu0,
        FakeComfyUI(default=Script(exec_s=0.3)) as gpu1,
    ):
        section = {"servers": _servers(gpu0, gpu1), **FAST}
        camera = await make_handler(CameraAngleHandler, "comfy_camera_angle", section)
        edit = await make_handler(QwenEditHandler, "qwen_edit", section)
        assert camera.servers == edit.servers  # one slot per GPU, whichever kind uses it
        gate = GpuGate(slots=2)
        jobs = []
        for i in range(8):
            if i % 2:
                ctx = _context(http, "qwen_edit", f"e{i}", gate=gate)
                jobs.append(edit.run(QwenEditInput(images=[IMAGE], prompt="x"), ctx))
            else:
                ctx = _context(http, "comfy_camera_angle", f"c{i}", gate=gate)
                jobs.append(camera.run(CAMERA, ctx))
        results = await asyncio.gather(*jobs)
    assert {r["server"] for r in results} == {"gpu0", "gpu1"}
    for fake in (gpu0, gpu1):
        assert fake.executions, "both GPUs worked"
        spans = sorted((e.started, e.ended) for e in fake.executions)
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(spans))
        # Each prompt ran on the server that got its inputs.
        for body in fake.submitted:
            for node in body["prompt"].values():
                if node["class_type"] == "LoadImage":
                    assert node["inputs"]["image"] in fake.inputs
    assert len(gpu0.executions) + len(gpu1.executions) == 8
    for name in ("gpu0", "gpu1"):
        assert _sample(metrics, "shortdrama_comfyui_busy_seconds_total", server=name) > 0


async def test_a_dead_server_loses_only_its_own_job_and_is_skipped_until_back(
    http: aiohttp.ClientSession, make_handler: Callable[..., Any], logs: LogRecorder
) -> None:
    async with FakeComfyUI() as gpu0, FakeComfyUI() as gpu1:
        section = {"servers": _servers(gpu0, gpu1), **FAST}
        handler = await make_handler(CameraAngleHandler, "comfy_camera_angle", section)
        gpu0.scripts.append(Script(exec_s=5.0))
        gpu1.scripts.append(Script(exec_s=1.0))
        gate = GpuGate(slots=2)
        on0 = asyncio.create_task(handler.run(CAMERA, _context(http, "k", "a", gate=gate)))
        await gpu0.wait_running()
        on1 = asyncio.create_task(handler.run(CAMERA, _context(http, "k", "b", gate=gate)))
        await gpu1.wait_running()
        await gpu0.stop(lose_state=True)  # GPU 0's ComfyUI crashes

        with pytest.raises(TransientJobError):  # retried by the runner, elsewhere
            await on0
        assert (await on1)["server"] == "gpu1"
        assert logs.events("comfyui_down")[0]["server"] == "gpu0"
        assert await handler.health() == {"comfyui": "degraded"}
        assert "server gpu0" in handler.explain()["comfyui"] and handler.ready() is True
        # While gpu0 is down every job goes to gpu1.
        for job in ("c", "d"):
            result = await handler.run(CAMERA, _context(http, "k", job, gate=gate))
            assert result["server"] == "gpu1"

        await gpu0.start()
        await eventually(lambda: bool(logs.events("comfyui_up")) and handler.explain() == {})
        assert [line["server"] for line in logs.events("comfyui_up")][-1] == "gpu0"
        result = await handler.run(CAMERA, _context(http, "k", "e", gate=gate))
        assert result["server"] == "gpu0"  # back in use (both idle: the first listed)


async def test_a_server_without_the_models_never_gets_that_kind(
    http: aiohttp.ClientSession, make_handler: Callable[..., Any]
) -> None:
    async with FakeComfyUI(models=NO_MODELS) as bare, FakeComfyUI() as full:
        section = {"servers": _servers(bare, full), **FAST}
        handler = await make_handler(CameraAngleHandler, "comfy_camera_angle", section)
        assert handler.ready() is True
        gate = GpuGate(slots=2)
        results = await asyncio.gather(
            *(handler.run(CAMERA, _context(http, "k", f"j{i}", gate=gate)) for i in range(3))
        )
        assert {r["server"] for r in results} == {"gpu1"}
        assert not bare.submitted and not [p for _, p, _ in bare.requests if p == "/upload/image"]


async def test_two_kinds_on_one_comfyui_must_agree_on_its_slots_and_queue(
    http: aiohttp.ClientSession, make_handler: Callable[..., Any]
) -> None:
    async with FakeComfyUI() as comfy:
        camera = await make_handler(
            CameraAngleHandler, "comfy_camera_angle", ComfySettings(base_url=comfy.url, **FAST)
        )
        edit = await make_handler(
            QwenEditHandler, "qwen_edit", ComfySettings(base_url=comfy.url, **FAST)
        )
        assert camera.servers == edit.servers  # one queue, one count of what is in it
        with pytest.raises(ValueError, match=r"configured twice .* queue_ahead \(1\+1 and 1\+3\)"):
            await make_handler(
                CameraAngleHandler,
                "comfy_camera_angle_deep",
                ComfySettings(base_url=comfy.url, queue_ahead=3, **FAST),
            )


def test_settings_keep_base_url_and_refuse_both_forms() -> None:
    assert [(c.name, c.base_url) for c in ComfySettings().server_configs()] == [
        ("0", "http://127.0.0.1:8188")
    ]
    two = ComfySettings(servers=[{"base_url": "http://a:1"}, {"base_url": "http://b:2/"}])  # type: ignore[list-item]
    assert [(c.name, c.base_url) for c in two.server_configs()] == [
        ("0", "http://a:1"),
        ("1", "http://b:2"),
    ]
    with pytest.raises(ValueError, match="not both"):
        ComfySettings(base_url="http://a:1", servers=[{"base_url": "http://b:2"}])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="own name and base_url"):
        ComfySettings(servers=[{"base_url": "http://a:1"}, {"base_url": "http://a:1"}])  # type: ignore[list-item]


# --- 5. reloads -----------------------------------------------------------------------------


async def test_edited_template_is_reloaded_and_checked_and_a_bad_file_keeps_the_old_one(
    http: aiohttp.ClientSession,
    make_handler: Callable[..., Any],
    logs: LogRecorder,
    tmp_path: Path,
) -> None:
    path = tmp_path / "camera_angle.json"
    graph = _template("camera_angle")
    path.write_text(json.dumps(graph, ensure_ascii=False), encoding="utf-8")
    async with FakeComfyUI() as comfy:
        settings = ComfySettings(base_url=comfy.url, workflow_dir=tmp_path, **FAST)
        handler = await make_handler(CameraAngleHandler, "comfy_camera_angle", settings)
        assert handler.ready() is True

        graph["5"]["inputs"]["lora_name"] = "studio_v3.safetensors"  # not installed
        path.write_text(json.dumps(graph, ensure_ascii=False), encoding="utf-8")
        await eventually(lambda: not handler.ready())
        assert logs.events("comfy_workflows_reloaded")
        assert "studio_v3.safetensors" in handler.explain()["comfyui"]

        path.write_text("{ half-saved", encoding="utf-8")
        await eventually(lambda: bool(logs.events("comfy_workflows_reload_failed")))
        (failed,) = logs.events("comfy_workflows_reload_failed")
        assert str(path) in failed["error"] and failed["kept"] == "previous"
        assert handler.workflow.graph["5"]["inputs"]["lora_name"] == "studio_v3.safetensors"

        comfy.models["loras"].append("studio_v3.safetensors")
        await eventually(handler.ready)
        await handler.run(CAMERA, _context(http, "comfy_camera_angle"))
        assert comfy.submitted[-1]["prompt"]["5"]["inputs"]["lora_name"] == "studio_v3.safetensors"


async def test_sighup_reloads_the_templates(
    make_handler: Callable[..., Any], logs: LogRecorder, tmp_path: Path
) -> None:
    (tmp_path / "invert.json").write_text(json.dumps(_invert_graph()), encoding="utf-8")
    async with FakeComfyUI() as comfy:
        settings = ComfyWorkflowSettings(
            base_url=comfy.url, enabled=True, workflow_dir=tmp_path, health_interval_s=60
        )
        handler = await make_handler(ComfyWorkflowHandler, "comfy_workflow", settings)
        assert sorted(handler.workflows) == ["invert"]
        if not handler.pool._sighup:
            pytest.skip("no signal handling on this platform")
        (tmp_path / "again.json").write_text(json.dumps(_invert_graph()), encoding="utf-8")
        os.kill(os.getpid(), signal.SIGHUP)
        await eventually(lambda: sorted(handler.workflows) == ["again", "invert"])
        assert logs.events("comfy_workflows_reloaded")


# --- through the daemon (API → SQS → handler), AWS on moto --------------------------------


async def test_daemon_names_the_missing_files_and_holds_the_jobs_it_cannot_run(
    make_settings: Callable[..., Any], start_app: Any, tmp_path: Path
) -> None:
    (tmp_path / "invert.json").write_text(json.dumps(_invert_graph()), encoding="utf-8")
    async with FakeComfyUI(models=NO_MODELS) as comfy:
        options = {
            "comfy_camera_angle": {"base_url": comfy.url, **FAST},
            "comfy_workflow": {
                "base_url": comfy.url,
                "enabled": True,
                "workflow_dir": str(tmp_path),
                **FAST,
            },
        }
        settings = make_settings(handlers={"allow": list(options), "options": options})
        _, client = await start_app(settings)

        health = await (await client.get("/health")).json()
        assert health["status"] == "degraded" and health["checks"]["comfyui"] == "degraded"
        assert "model file qwen_image_vae.safetensors in models/vae" in health["details"]["comfyui"]
        ready = await client.get("/ready")
        assert ready.status == 503
        (reason,) = (await ready.json())["reasons"]
        assert reason.startswith("comfy_camera_angle: ") and "镜头转换.safetensors" in reason

        # The GPU queue is consumed (invert runs); the camera job is held, unclaimed.
        camera = await submit(client, "camera-angle", {"image": IMAGE, "move": "close_up"})
        invert = await submit(
            client, "comfy-workflow", {"workflow": "invert", "images": {"photo": IMAGE}}
        )
        assert (await wait_for(client, invert))["status"] == "completed"
        await asyncio.sleep(1.0)
        job = await wait_for(client, camera, statuses=("pending",))
        assert job["attempts"] == 0
        assert not [b for b in comfy.submitted if "13" in b["prompt"]]
