"""ComfyUI handlers driven directly, with a recording JobContext and a fake ComfyUI."""

from __future__ import annotations

import asyncio
import io
import json
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fakes.comfyui import FakeComfyUI, Script, png_bytes
from PIL import Image
from pydantic import ValidationError
from support import submit, wait_for

from shortdrama_worker.comfy.workflows import WorkflowError, packaged_workflow_dir
from shortdrama_worker.contract import Handler
from shortdrama_worker.contract.errors import PermanentJobError, TransientJobError
from shortdrama_worker.contract.testing import FakeJobContext, GpuGate, data_uri, make_env
from shortdrama_worker.handlers.camera_angle import CameraAngleHandler, CameraAngleInput
from shortdrama_worker.handlers.comfy_common import ComfySettings, derive_seed
from shortdrama_worker.handlers.comfy_workflow import (
    ComfyWorkflowHandler,
    ComfyWorkflowInput,
    ComfyWorkflowSettings,
)
from shortdrama_worker.handlers.qwen_edit import QwenEditHandler, QwenEditInput
from shortdrama_worker.metrics import Metrics
from shortdrama_worker.plugins import HandlerRegistry

IMAGE = data_uri(png_bytes(7, size=(80, 60)))
FAST = {"poll_interval_s": 0.5, "reconnect_attempts": 3, "reconnect_backoff_max_s": 0.2}


@pytest.fixture
async def comfy() -> AsyncIterator[FakeComfyUI]:
    async with FakeComfyUI() as fake:
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def make_handler(
    http: aiohttp.ClientSession,
) -> AsyncIterator[Callable[..., Any]]:
    started: list[Handler] = []

    async def make(cls: type[Handler], kind: str, settings: Any) -> Any:
        handler = cls(make_env(cls, settings, kind=kind, service_http=http, metrics=Metrics()))
        await handler.startup()
        started.append(handler)
        return handler

    yield make
    for handler in started:
        await handler.shutdown()


def _context(
    http: aiohttp.ClientSession, kind: str, job_id: str = "job-1", **kw: Any
) -> FakeJobContext:
    return FakeJobContext(job_id=job_id, kind=kind, http=http, **kw)


def _node(class_type: str, title: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs, "_meta": {"title": title}}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _copy_template(name: str, directory: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    graph = json.loads((packaged_workflow_dir() / f"{name}.json").read_text(encoding="utf-8"))
    edit(graph)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    path.write_text(json.dumps(graph, ensure_ascii=False), encoding="utf-8")
    return path


async def test_camera_angle_builds_the_lora_instruction_and_keeps_the_gpu_for_execution_only(
    comfy: FakeComfyUI, http: aiohttp.ClientSession, make_handler: Callable[..., Any]
) -> None:
    handler = await make_handler(
        CameraAngleHandler, "comfy_camera_angle", ComfySettings(base_url=comfy.url, **FAST)
    )
    ctx = _context(http, "comfy_camera_angle")
    params = CameraAngleInput(image=IMAGE, move="rotate_left", degrees=90)
    result = await handler.run(params, ctx)

    graph = comfy.submitted[-1]["prompt"]
    assert (
        graph["10"]["inputs"]["prompt"]
        == "将镜头向左旋转90度 Rotate the camera 90 degrees to the left."
    )
    assert graph["13"]["inputs"]["steps"] == 4 and graph["13"]["inputs"]["cfg"] == 1.0
    assert graph["4"]["inputs"]["strength_model"] == 1.0  # Lightning on
    assert graph["5"]["inputs"]["strength_model"] == 1.25
    assert graph["13"]["inputs"]["seed"] == result["seed"] == derive_seed("job-1")
    assert graph["8"]["inputs"]["image"] == "shortdrama/job-1-image.png"
    # The stored file is the image ComfyUI saved.
    assert len(ctx.stored) == 1 and ctx.stored[0].data == png_bytes(0)
    assert result["images"][0]["url"].key == ctx.stored[0].key  # rendered as a URL when read
    assert set(result["timings"]) >= {"upload", "queue", "execute", "download", "store", "total"}
    # Progress climbs through execution and never goes back.
    percents = [p for p, _ in ctx.progress_reports]
    assert percents == sorted(percents) and percents[-1] >= 90
    assert any(stage == "executing" for _, stage in ctx.progress_reports)
    # GPU discipline: upload before the slot, download after it.
    (held_from, held_to) = ctx.gate.held[0]
    uploads = [t for m, p, t in comfy.requests if p == "/upload/image"]
    views = [t for m, p, t in comfy.requests if p == "/view"]
    prompts = [t for m, p, t in comfy.requests if p == "/prompt" and m == "POST"]
    assert max(uploads) < held_from <= min(prompts)
    assert held_to <= min(views)
    execution = comfy.executions[-1]
    assert held_from <= execution.started and execution.ended <= held_to


async def test_camera_angle_is_deterministic_per_job_and_honours_explicit_settings(
    comfy: FakeComfyUI, http: aiohttp.ClientSession, make_handler: Callable[..., Any]
) -> None:
    handler = await make_handler(
        CameraAngleHandler, "comfy_camera_angle", ComfySettings(base_url=comfy.url, **FAST)
    )
    params = CameraAngleInput(image=IMAGE, move="birds_eye", lightning=False)
    first = await handler.run(params, _context(http, "comfy_camera_angle", "job-a"))
    again = await handler.run(params, _context(http, "comfy_camera_angle", "job-a"))
    other = await handler.run(params, _context(http, "comfy_camera_angle", "job-b"))
    assert first["seed"] == again["seed"] != other["seed"]
    graph = comfy.submitted[-1]["prompt"]
    assert (
        graph["10"]["inputs"]["prompt"]
        == "将相机转向鸟瞰视角 Turn the camera to a bird's-eye view."
    )
    assert graph["13"]["inputs"]["steps"] == 20 and graph["13"]["inputs"]["cfg"] == 2.5
    assert graph["4"]["inputs"]["strength_model"] == 0.0  # Lightning off

    free = CameraAngleInput(image=IMAGE, instruction="将镜头转为俯视", seed=42, steps=8, cfg=1.5)
    result = await handler.run(free, _context(http, "comfy_camera_angle", "job-c"))
    graph = comfy.submitted[-1]["prompt"]
    assert graph["10"]["inputs"]["prompt"] == "将镜头转为俯视"
    assert (graph["13"]["inputs"]["seed"], graph["13"]["inputs"]["steps"]) == (42, 8)
    assert result["instruction"] == "将镜头转为俯视"


def test_camera_angle_input_needs_exactly_one_instruction() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        CameraAngleInput(image=IMAGE)
    with pytest.raises(ValidationError, match="exactly one"):
        CameraAngleInput(image=IMAGE, move="close_up", instruction="x")
    with pytest.raises(ValidationError, match="degrees"):
        CameraAngleInput(image=IMAGE, move="close_up", degrees=30)
    with pytest.raises(ValidationError):
        CameraAngleInput(image=IMAGE, move="rotate_left", degrees=500)
    with pytest.raises(ValidationError):
        CameraAngleInput(image=IMAGE, move="zoom")  # type: ignore[arg-type]


async def test_qwen_edit_wires_only_the_given_images_and_the_output_size(
    comfy: FakeComfyUI, http: aiohttp.ClientSession, make_handler: Callable[..., Any]
) -> None:
    handler = await make_handler(
        QwenEditHandler, "qwen_edit", ComfySettings(base_url=comfy.url, **FAST)
    )
    params = QwenEditInput(
        images=[IMAGE, data_uri(png_bytes(3))],
        prompt="Put the man from Picture 1 in the room of Picture 2",
        negative_prompt="blurry",
        width=1024,
    )
    result = await handler.run(params, _context(http, "qwen_edit"))
    graph = comfy.submitted[-1]["prompt"]
    assert "9" not in graph  # the third loader is pruned
    positive = graph["12"]["inputs"]
    assert positive["image2"] == ["8", 0] and "image3" not in positive
    assert positive["prompt"].startswith("Put the man")
    assert graph["13"]["inputs"]["prompt"] == "blurry"
    assert (graph["11"]["inputs"]["width"], graph["11"]["inputs"]["height"]) == (1024, 0)
    assert graph["8"]["inputs"]["image"] == "shortdrama/job-1-image2.png"
    assert result["seed"] == derive_seed("job-1") and len(result["images"]) == 1

    await handler.run(
        QwenEditInput(images=[IMAGE], prompt="Make it night"), _context(http, "qwen_edit", "j2")
    )
    graph = comfy.submitted[-1]["prompt"]
    assert "8" not in graph and "9" not in graph
    assert set(graph["12"]["inputs"]) == {"clip", "vae", "image1", "prompt"}
    assert (graph["15"]["inputs"]["steps"], graph["15"]["inputs"]["cfg"]) == (20, 2.5)


async def test_several_output_images_are_all_stored(
    comfy: FakeComfyUI, http: aiohttp.ClientSession, make_handler: Callable[..., Any]
) -> None:
    handler = await make_handler(
        QwenEditHandler, "qwen_edit", ComfySettings(base_url=comfy.url, **FAST)
    )
    comfy.scripts.append(Script(images=3))
    ctx = _context(http, "qwen_edit")
    result = await handler.run(QwenEditInput(images=[IMAGE], prompt="x"), ctx)
    assert [s.name for s in ctx.stored] == ["image_1.png", "image_2.png", "image_3.png"]
    assert len({s.data for s in ctx.stored}) == 3
    assert len(result["images"]) == 3


async def test_node_error_fails_permanently_naming_the_node(
    comfy: FakeComfyUI,
    http: aiohttp.ClientSession,
    make_handler: Callable[..., Any],
    tmp_path: Path,
) -> None:
    def bad_sampler(graph: dict[str, Any]) -> None:
        graph["13"]["inputs"]["scheduler"] = "warp_speed"

    _copy_template("camera_angle", tmp_path, bad_sampler)
    handler = await make_handler(
        CameraAngleHandler,
        "comfy_camera_angle",
        ComfySettings(base_url=comfy.url, workflow_dir=tmp_path, **FAST),
    )
    ctx = _context(http, "comfy_camera_angle")
    with pytest.raises(PermanentJobError) as caught:
        await handler.run(CameraAngleInput(image=IMAGE, move="close_up"), ctx)
    assert 'node 13 KSampler "Sampler $seed $steps $cfg"' in caught.value.message
    assert "warp_speed" in caught.value.message
    assert ctx.gate.held  # the slot was taken for the submission and given back
    assert ctx.stored == []


async def test_workflow_override_from_a_directory_is_used(
    comfy: FakeComfyUI,
    http: aiohttp.ClientSession,
    make_handler: Callable[..., Any],
    tmp_path: Path,
) -> None:
    def studio_lora(graph: dict[str, Any]) -> None:
        graph["5"]["inputs"]["lora_name"] = "studio_angles_v2.safetensors"
        graph["13"]["inputs"]["sampler_name"] = "res_multistep"
        graph["99"] = graph.pop("15")  # ids may change; titles carry the meaning

    _copy_template("camera_angle", tmp_path / "flows", studio_lora)
    comfy.models["loras"].append("studio_angles_v2.safetensors")  # the studio installed it
    handler = await make_handler(
        CameraAngleHandler,
        "comfy_camera_angle",
        {"base_url": comfy.url, "workflow_dir": str(tmp_path / "flows"), **FAST},
    )
    await handler.run(
        CameraAngleInput(image=IMAGE, move="worms_eye"), _context(http, "comfy_camera_angle")
    )
    graph = comfy.submitted[-1]["prompt"]
    assert graph["5"]["inputs"]["lora_name"] == "studio_angles_v2.safetensors"
    assert graph["13"]["inputs"]["sampler_name"] == "res_multistep"
    assert graph["99"]["inputs"]["filename_prefix"] == "shortdrama/job-1"


async def test_template_missing_a_marker_fails_startup(
    comfy: FakeComfyUI, make_handler: Callable[..., Any], tmp_path: Path
) -> None:
    def drop_seed(graph: dict[str, Any]) -> None:
        graph["13"]["_meta"]["title"] = "Sampler $steps $cfg"

    path = _copy_template("camera_angle", tmp_path, drop_seed)
    with pytest.raises(WorkflowError) as caught:
        await make_handler(
            CameraAngleHandler,
            "comfy_camera_angle",
            ComfySettings(base_url=comfy.url, workflow_dir=tmp_path),
        )
    assert str(path) in str(caught.value) and "$seed" in str(caught.value)


async def test_unreachable_comfyui_is_transient_degraded_and_not_ready_until_back(
    http: aiohttp.ClientSession, make_handler: Callable[..., Any]
) -> None:
    port = _free_port()
    handler = await make_handler(
        CameraAngleHandler,
        "comfy_camera_angle",
        ComfySettings(base_url=f"http://127.0.0.1:{port}", health_interval_s=0.1, **FAST),
    )
    assert handler.ready() is False
    assert await handler.health() == {"comfyui": "degraded"}
    ctx = _context(http, "comfy_camera_angle")
    with pytest.raises(TransientJobError, match="unreachable"):
        await handler.run(CameraAngleInput(image=IMAGE, move="close_up"), ctx)
    assert ctx.gate.held == []  # never took the GPU for a ComfyUI that is not there

    async with FakeComfyUI(port=port):
        for _ in range(60):  # the background probe notices on its own
            if handler.ready():
                break
            await asyncio.sleep(0.05)
        assert handler.ready() is True
        assert await handler.health() == {"comfyui": "healthy"}


async def test_cancelled_job_interrupts_its_prompt_and_frees_the_gpu(
    comfy: FakeComfyUI, http: aiohttp.ClientSession, make_handler: Callable[..., Any]
) -> None:
    handler = await make_handler(
        CameraAngleHandler, "comfy_camera_angle", ComfySettings(base_url=comfy.url, **FAST)
    )
    comfy.scripts.append(Script(exec_s=10.0))
    gate = GpuGate()
    ctx = _context(http, "comfy_camera_angle", gate=gate)
    task = asyncio.create_task(handler.run(CameraAngleInput(image=IMAGE, move="close_up"), ctx))
    prompt_id = await comfy.wait_running()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert comfy.interrupts == [prompt_id]
    assert len(gate.held) == 1  # released
    await comfy.wait_idle(timeout=2)
    assert comfy.executions[-1].status == "interrupted"


async def test_comfy_workflow_is_off_unless_enabled(
    comfy: FakeComfyUI, http: aiohttp.ClientSession, make_handler: Callable[..., Any]
) -> None:
    handler = await make_handler(
        ComfyWorkflowHandler, "comfy_workflow", ComfyWorkflowSettings(base_url=comfy.url)
    )
    assert handler.enabled is False
    assert handler.ready() is True  # ComfyUI is up; it says so like its siblings
    with pytest.raises(PermanentJobError) as caught:
        await handler.run(ComfyWorkflowInput(workflow="any"), _context(http, "comfy_workflow"))
    assert caught.value.code == "handler_disabled"
    with pytest.raises(ValidationError, match="workflow_dir"):
        ComfyWorkflowSettings(enabled=True)


async def test_comfy_workflow_runs_a_named_operator_graph_with_named_inputs(
    comfy: FakeComfyUI,
    http: aiohttp.ClientSession,
    make_handler: Callable[..., Any],
    tmp_path: Path,
) -> None:
    scale = {"upscale_method": "area", "width": 0, "height": 0, "crop": "disabled"}
    graph = {
        "1": _node("LoadImage", "$photo:image", image="x.png"),
        "2": _node("ImageScale", "$width $height", image=["1", 0], **scale),
        "3": _node("ImageInvert", "Invert", image=["2", 0]),
        "4": _node("SaveImage", "$filename_prefix", images=["3", 0], filename_prefix="inv"),
    }
    (tmp_path / "invert.json").write_text(json.dumps(graph), encoding="utf-8")
    _copy_template("qwen_edit", tmp_path, lambda graph: None)
    handler = await make_handler(
        ComfyWorkflowHandler,
        "comfy_workflow",
        ComfyWorkflowSettings(base_url=comfy.url, enabled=True, workflow_dir=tmp_path, **FAST),
    )
    ctx = _context(http, "comfy_workflow")
    params = ComfyWorkflowInput(workflow="invert", images={"photo": IMAGE}, values={"width": 512})
    result = await handler.run(params, ctx)
    graph = comfy.submitted[-1]["prompt"]
    assert graph["1"]["inputs"]["image"] == "shortdrama/job-1-photo.png"
    assert graph["2"]["inputs"]["width"] == 512 and graph["2"]["inputs"]["height"] == 0
    assert result["workflow"] == "invert" and len(ctx.stored) == 1
    assert "seed" not in result  # this graph has no $seed

    qwen = ComfyWorkflowInput(
        workflow="qwen_edit", images={"image1": IMAGE}, values={"prompt": "x"}, seed=5
    )
    result = await handler.run(qwen, _context(http, "comfy_workflow", "j2"))
    assert result["seed"] == 5 and comfy.submitted[-1]["prompt"]["15"]["inputs"]["seed"] == 5

    for bad, needle in (
        (ComfyWorkflowInput(workflow="nope"), "unknown workflow 'nope'"),
        (ComfyWorkflowInput(workflow="invert", values={"steps": 3}), "$steps"),
        (ComfyWorkflowInput(workflow="invert", images={"width": IMAGE}), "$width"),
    ):
        with pytest.raises(PermanentJobError) as caught:
            await handler.run(bad, _context(http, "comfy_workflow", "j3"))
        assert needle in caught.value.message


# --- through the real application (API → SQS → handler → S3), AWS on moto ------------------


def _app_settings(
    make_settings: Callable[..., Any], options: dict[str, Any], attempts: int = 3
) -> Any:
    return make_settings(
        handlers={"allow": list(options), "options": options},
        consumer={"max_attempts": attempts},
    )


async def _result_bytes(client: Any, job: dict[str, Any]) -> bytes:
    async with client.session.get(job["result_url"]) as response:
        assert response.status == 200
        data: bytes = await response.read()
        return data


def _pixels(data: bytes) -> bytes:
    """An image's pixels: results carry ComfyUI's image plus a signed manifest."""
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGBA").tobytes()


async def test_app_camera_angle_job_completes_with_its_image_in_s3(
    comfy: FakeComfyUI, make_settings: Callable[..., Any], start_app: Any
) -> None:
    settings = _app_settings(make_settings, {"comfy_camera_angle": {"base_url": comfy.url, **FAST}})
    _, client = await start_app(settings)
    job_id = await submit(client, "camera-angle", {"image": IMAGE, "move": "wide_angle"})
    job = await wait_for(client, job_id)
    assert job["status"] == "completed", job
    assert _pixels(await _result_bytes(client, job)) == _pixels(png_bytes(0))
    assert (
        job["result"]["instruction"] == "将镜头转为广角镜头 Turn the camera to a wide-angle lens."
    )
    assert job["result"]["seed"] == derive_seed(job_id)
    assert job["progress"] == 100
    assert (await (await client.get("/health")).json())["checks"]["comfyui"] == "healthy"
    metrics = await (await client.get("/metrics")).text()
    assert (
        'shortdrama_job_phase_duration_seconds_count{kind="comfy_camera_angle",phase="execute"}'
        in metrics
    )


async def test_app_qwen_edit_job_completes_with_every_output_in_s3(
    comfy: FakeComfyUI, make_settings: Callable[..., Any], start_app: Any
) -> None:
    settings = _app_settings(make_settings, {"qwen_edit": {"base_url": comfy.url, **FAST}})
    _, client = await start_app(settings)
    comfy.scripts.append(Script(images=2))
    job_id = await submit(
        client, "qwen-image-edit", {"images": [IMAGE, IMAGE], "prompt": "Make it rain"}
    )
    job = await wait_for(client, job_id)
    assert job["status"] == "completed", job
    assert _pixels(await _result_bytes(client, job)) == _pixels(png_bytes(0))
    second = job["result"]["images"][1]
    async with client.session.get(second["url"]) as response:
        assert _pixels(await response.read()) == _pixels(png_bytes(1))


async def test_app_comfy_workflow_job_runs_the_operator_graph(
    comfy: FakeComfyUI, make_settings: Callable[..., Any], start_app: Any, tmp_path: Path
) -> None:
    _copy_template("camera_angle", tmp_path, lambda graph: None)
    section = {"base_url": comfy.url, "enabled": True, "workflow_dir": str(tmp_path), **FAST}
    _, client = await start_app(_app_settings(make_settings, {"comfy_workflow": section}))
    payload = {
        "workflow": "camera_angle",
        "images": {"image": IMAGE},
        "values": {"prompt": "将镜头向前移动 Move the camera forward.", "steps": 6},
    }
    job = await wait_for(client, await submit(client, "comfy-workflow", payload))
    assert job["status"] == "completed", job
    assert _pixels(await _result_bytes(client, job)) == _pixels(png_bytes(0))
    assert comfy.submitted[-1]["prompt"]["13"]["inputs"]["steps"] == 6


async def test_app_node_error_fails_the_job_with_the_node_named(
    comfy: FakeComfyUI, make_settings: Callable[..., Any], start_app: Any
) -> None:
    settings = _app_settings(make_settings, {"comfy_camera_angle": {"base_url": comfy.url, **FAST}})
    _, client = await start_app(settings)
    comfy.scripts.append(Script(fail_node="14", exception_message="VAE decode failed"))
    job = await wait_for(
        client, await submit(client, "camera-angle", {"image": IMAGE, "move": "close_up"})
    )
    assert job["status"] == "failed"
    assert job["attempts"] == 1  # permanent: not retried
    assert 'node 14 VAEDecode "Decode"' in job["error_message"]
    assert "VAE decode failed" in job["error"]["message"]


async def test_app_comfyui_crash_mid_job_is_retried_once_it_is_back(
    comfy: FakeComfyUI, make_settings: Callable[..., Any], start_app: Any
) -> None:
    section = {"base_url": comfy.url, "health_interval_s": 0.2, **FAST}
    settings = _app_settings(make_settings, {"comfy_camera_angle": section}, attempts=5)
    _, client = await start_app(settings)
    comfy.scripts.append(Script(exec_s=5.0))
    job_id = await submit(client, "camera-angle", {"image": IMAGE, "move": "close_up"})
    await comfy.wait_running(timeout=15)
    await comfy.stop(lose_state=True)  # ComfyUI crashes with the prompt running

    job = await wait_for(client, job_id, statuses=("pending", "failed"), timeout=15)
    for _ in range(200):  # until the failed attempt has been put back
        if job["status"] != "processing" and job["attempts"] >= 1:
            break
        await asyncio.sleep(0.05)
        job = await wait_for(client, job_id, statuses=("pending", "processing", "failed"))
    assert job["status"] == "pending" and job["attempts"] == 1, job
    assert "unreachable" in job["error_message"]
    health = await (await client.get("/health")).json()
    assert health["status"] == "degraded" and health["checks"]["comfyui"] == "degraded"
    assert (await client.get("/ready")).status == 503
    # While ComfyUI is down the job waits instead of burning its attempts.
    await asyncio.sleep(1.0)
    job = await wait_for(client, job_id, statuses=("pending",))
    assert job["attempts"] == 1

    await comfy.start()
    job = await wait_for(client, job_id, timeout=20)
    assert job["status"] == "completed" and job["attempts"] == 2, job
    assert _pixels(await _result_bytes(client, job)) == _pixels(png_bytes(0))
    assert (await (await client.get("/health")).json())["checks"]["comfyui"] == "healthy"
    assert (await client.get("/ready")).status == 200


async def test_app_cancel_interrupts_the_running_prompt(
    comfy: FakeComfyUI, make_settings: Callable[..., Any], start_app: Any
) -> None:
    settings = _app_settings(make_settings, {"comfy_camera_angle": {"base_url": comfy.url, **FAST}})
    _, client = await start_app(settings)
    comfy.scripts.append(Script(exec_s=20.0))
    job_id = await submit(client, "camera-angle", {"image": IMAGE, "move": "close_up"})
    prompt_id = await comfy.wait_running(timeout=15)
    response = await client.delete(f"/api/v1/jobs/{job_id}")
    assert response.status == 202
    job = await wait_for(client, job_id, timeout=10)
    assert job["status"] == "cancelled"
    assert prompt_id in comfy.interrupts
    await comfy.wait_idle(timeout=5)
    assert comfy.executions[-1].status == "interrupted"


class _QuickCameraAngle(CameraAngleHandler):
    # Long enough to fetch, upload and queue the prompt on a slow machine,
    # far shorter than the 20-s execution it must cut off.
    timeout_s = 4.0


async def test_app_timeout_interrupts_the_prompt_and_fails_the_job(
    comfy: FakeComfyUI, make_settings: Callable[..., Any], start_app: Any
) -> None:
    settings = _app_settings(make_settings, {"comfy_camera_angle": {"base_url": comfy.url, **FAST}})
    registry = HandlerRegistry.from_classes({"comfy_camera_angle": _QuickCameraAngle})
    _, client = await start_app(settings, registry)
    comfy.scripts.append(Script(exec_s=20.0))
    job_id = await submit(client, "camera-angle", {"image": IMAGE, "move": "close_up"})
    prompt_id = await comfy.wait_running(timeout=15)
    job = await wait_for(client, job_id, timeout=15)
    assert job["status"] == "failed" and job["error"]["code"] == "timeout"
    assert prompt_id in comfy.interrupts
    await comfy.wait_idle(timeout=5)
    assert comfy.executions[-1].status == "interrupted"
