"""The ComfyUI back end against the worker's fake ComfyUI (tests/fakes/comfyui.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from conftest import decode, image_bytes
from fakes.comfyui import FakeComfyUI, Script
from shortdrama_worker.contract import PermanentJobError, TransientJobError
from shortdrama_worker.contract.testing import FakeJobContext, data_uri, make_env

from shortdrama_compose.handler import ComposeHandler
from shortdrama_compose.model import ComposeInput

PERSON, PLACE = (200, 30, 30), (30, 200, 30)
CLOTHES = [(30, 30, 200), (200, 200, 30), (120, 0, 160)]


@pytest.fixture
async def comfy() -> AsyncIterator[FakeComfyUI]:
    async with FakeComfyUI(default=Script(exec_s=0.3)) as fake:
        yield fake


@pytest.fixture
async def handler(comfy: FakeComfyUI, http: aiohttp.ClientSession) -> AsyncIterator[ComposeHandler]:
    settings = {"comfyui": {"base_url": comfy.url, "poll_interval_s": 0.5}}
    handler = ComposeHandler(make_env(ComposeHandler, settings, kind="compose", service_http=http))
    await handler.startup()
    yield handler
    await handler.shutdown()


def job(**extra: Any) -> ComposeInput:
    return ComposeInput.model_validate(
        {
            "person_image": data_uri(image_bytes(PERSON, (64, 96))),
            "clothing_images": [data_uri(image_bytes(c, (60, 90))) for c in CLOTHES],
            "place_image": data_uri(image_bytes(PLACE, (160, 90))),
            **extra,
        }
    )


def node(graph: dict[str, Any], class_type: str, title: str = "") -> dict[str, Any]:
    (found,) = [
        n
        for n in graph.values()
        if n["class_type"] == class_type and title in n.get("_meta", {}).get("title", "")
    ]
    return found


async def test_the_three_images_and_the_prompt_reach_the_right_inputs(
    handler: ComposeHandler, comfy: FakeComfyUI
) -> None:
    ctx = FakeJobContext(kind="compose", job_id="job-42")
    result = await handler.run(job(prompt="a red scarf", seed=5), ctx)

    graph = comfy.submitted[0]["prompt"]
    encoder = node(graph, "TextEncodeQwenImageEditPlus", "Instruction")
    loaded = {
        slot: graph[encoder["inputs"][slot][0]]["inputs"]["image"]
        for slot in ("image1", "image2", "image3")
    }
    assert loaded == {
        "image1": "shortdrama/job-42-person.png",
        "image2": "shortdrama/job-42-clothing.png",
        "image3": "shortdrama/job-42-place.png",
    }
    assert decode(comfy.inputs[loaded["image1"]]).convert("RGB").getpixel((5, 5)) == PERSON
    assert decode(comfy.inputs[loaded["image3"]]).convert("RGB").getpixel((5, 5)) == PLACE
    assert encoder["inputs"]["prompt"].startswith("Picture 1 shows a person")
    assert encoder["inputs"]["prompt"].endswith("\na red scarf")
    assert node(graph, "KSampler")["inputs"]["seed"] == 5
    # No size asked: the place's 16:9 at about a megapixel.
    latent = node(graph, "EmptySD3LatentImage")["inputs"]
    assert (latent["width"], latent["height"]) == (1360, 768)
    assert result["status"] == "success" and result["clothing_items"] == 3
    assert result["imageUrl"] == result["images"][0]["url"]
    assert [s.name for s in ctx.stored] == ["image_1.png", "clothing_collage.png"]


async def test_the_collage_sent_keeps_every_clothing_item(
    handler: ComposeHandler, comfy: FakeComfyUI
) -> None:
    await handler.run(job(), FakeJobContext(kind="compose", job_id="j"))
    sheet = decode(comfy.inputs["shortdrama/j-clothing.png"]).convert("RGB")
    colours = {colour for _, colour in sheet.getcolors(sheet.width * sheet.height) or []}
    assert set(CLOTHES) <= colours


async def test_progress_climbs_and_the_gpu_is_held_only_while_comfyui_executes(
    handler: ComposeHandler, comfy: FakeComfyUI
) -> None:
    ctx = FakeJobContext(kind="compose")
    await handler.run(job(), ctx)
    percents = [p for p, _ in ctx.progress_reports]
    assert percents == sorted(percents)
    assert any(stage == "executing" and 10 < p < 90 for p, stage in ctx.progress_reports)
    ((held_from, held_to),) = ctx.gate.held
    uploads = [t for method, path, t in comfy.requests if path == "/upload/image"]
    views = [t for method, path, t in comfy.requests if path == "/view"]
    assert max(uploads) < held_from and held_to < min(views)
    (execution,) = comfy.executions
    assert held_from < execution.started and execution.ended < held_to


async def test_a_cancelled_job_withdraws_its_prompt(
    handler: ComposeHandler, comfy: FakeComfyUI
) -> None:
    comfy.scripts.append(Script(exec_s=30))
    task = asyncio.create_task(handler.run(job(), FakeJobContext(kind="compose")))
    running = await comfy.wait_running()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert comfy.queue_deletes == [running] and comfy.interrupts == [running]
    await comfy.wait_idle()
    assert comfy.executions[0].status == "interrupted"


async def test_a_node_failing_is_permanent_and_names_the_node(
    handler: ComposeHandler, comfy: FakeComfyUI
) -> None:
    comfy.scripts.append(Script(fail_node="13", exception_message="shape mismatch"))
    with pytest.raises(
        PermanentJobError, match=r'node 13 KSampler "Sampler \$seed.*shape mismatch'
    ):
        await handler.run(job(), FakeJobContext(kind="compose"))


async def test_running_out_of_gpu_memory_is_transient(
    handler: ComposeHandler, comfy: FakeComfyUI
) -> None:
    comfy.scripts.append(
        Script(fail_node="13", exception_type="torch.OutOfMemoryError", exception_message="CUDA")
    )
    with pytest.raises(TransientJobError, match="OutOfMemoryError"):
        await handler.run(job(), FakeJobContext(kind="compose"))


async def test_a_dropped_socket_costs_nothing_but_progress(
    handler: ComposeHandler, comfy: FakeComfyUI
) -> None:
    comfy.scripts.append(Script(exec_s=0.6, drop_ws_at=0.3, refuse_ws_s=5.0))
    result = await handler.run(job(), FakeJobContext(kind="compose"))
    assert result["status"] == "success"


async def test_an_unreadable_person_image_fails_naming_it_before_anything_is_sent(
    handler: ComposeHandler, comfy: FakeComfyUI
) -> None:
    params = job()
    params.person_image = data_uri(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(PermanentJobError, match="person_image: not a readable image"):
        await handler.run(params, FakeJobContext(kind="compose"))
    assert comfy.submitted == [] and comfy.inputs == {}
