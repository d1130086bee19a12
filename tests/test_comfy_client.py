"""The ComfyUI client against a fake ComfyUI over real HTTP and WebSocket on 127.0.0.1."""

from __future__ import annotations

import asyncio
import io
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from fakes.comfyui import FakeComfyUI, Script, png_bytes
from PIL import Image

from shortdrama_worker.comfy import (
    ComfyClient,
    ComfyClientOptions,
    ComfyExecutionError,
    ComfyInterruptedError,
    ComfyPromptLostError,
    ComfyRejectedError,
    ComfyUnavailableError,
    Progress,
)
from shortdrama_worker.comfy.workflows import load_workflow
from shortdrama_worker.contract.errors import PermanentJobError, TransientJobError
from shortdrama_worker.metrics import Metrics

FAST = ComfyClientOptions(
    connect_timeout_s=1.0,
    request_timeout_s=5.0,
    poll_interval_s=0.5,
    reconnect_attempts=4,
    reconnect_backoff_s=0.05,
    reconnect_backoff_max_s=0.2,
    fallback_poll_s=0.1,
    history_wait_s=2.0,
    cancel_timeout_s=2.0,
)


@pytest.fixture
async def comfy() -> AsyncIterator[FakeComfyUI]:
    async with FakeComfyUI() as fake:
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def client(comfy: FakeComfyUI, http: aiohttp.ClientSession, metrics: Metrics) -> ComfyClient:
    return ComfyClient(comfy.url, http, options=FAST, metrics=metrics)


async def _camera_graph(client: ComfyClient, **values: Any) -> dict[str, Any]:
    uploaded = await client.upload_image(png_bytes(), "in.png", subfolder="t")
    workflow = load_workflow("camera_angle", None)
    return workflow.render(
        {"image": uploaded.load_value, "prompt": "x", "seed": 1, "steps": 6, **values}
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _counter(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return value or 0.0


async def test_run_reports_progress_and_returns_saved_images(
    client: ComfyClient, comfy: FakeComfyUI, metrics: Metrics
) -> None:
    graph = await _camera_graph(client)
    seen: list[Progress] = []

    async def on_progress(update: Progress) -> None:
        seen.append(update)

    async with client.prompt_run(graph) as run:
        await run.submit()
        images = await run.wait(on_progress)

    sampler = [p.value for p in seen if p.node == "13"]
    assert sampler == [1, 2, 3, 4, 5, 6]  # every sampler step arrived
    # Node-level progress moves through the other nodes too, and never back.
    fractions = [p.fraction for p in seen]
    assert fractions == sorted(set(fractions)) and seen[-1].fraction == 1.0
    assert seen[-1].nodes_done == seen[-1].nodes_total == len(graph)
    assert len(images) == 1 and images[0].type == "output"
    data, content_type = await client.view(images[0])
    assert content_type == "image/png"
    assert Image.open(io.BytesIO(data)).size == (64, 48)
    # The prompt was ours: our id, our client id.
    assert comfy.submitted[-1]["prompt_id"] == run.prompt_id
    assert comfy.submitted[-1]["client_id"] == run.client_id
    assert run.reconnects == 0
    assert (
        _counter(
            metrics,
            "shortdrama_provider_request_duration_seconds_count",
            provider="comfyui",
            status_class="2xx",
        )
        >= 4
    )


async def test_several_outputs_are_collected_and_temp_previews_skipped(
    client: ComfyClient, comfy: FakeComfyUI
) -> None:
    graph = await _camera_graph(client)
    graph["16"] = {"class_type": "PreviewImage", "inputs": {"images": ["14", 0]}}
    comfy.scripts.append(Script(images=3))
    async with client.prompt_run(graph) as run:
        await run.submit()
        images = await run.wait()
    assert len(images) == 3
    assert {image.type for image in images} == {"output"}
    payloads = {(await client.view(image))[0] for image in images}
    assert len(payloads) == 3  # three distinct files, not one fetched thrice


async def test_validation_error_names_node_class_and_title(client: ComfyClient) -> None:
    graph = await _camera_graph(client)
    graph["13"]["inputs"]["sampler_name"] = "no_such_sampler"
    with pytest.raises(ComfyRejectedError) as caught:
        async with client.prompt_run(graph) as run:
            await run.submit()
    message = caught.value.message
    assert 'node 13 KSampler "Sampler $seed $steps $cfg"' in message
    assert "no_such_sampler" in message and "not in list" in message.lower()
    assert caught.value.nodes == ["13"]
    assert isinstance(caught.value, PermanentJobError)


async def test_unknown_node_class_is_permanent_and_names_it(client: ComfyClient) -> None:
    graph = await _camera_graph(client)
    graph["3"]["class_type"] = "NoSuchNode"
    with pytest.raises(ComfyRejectedError) as caught:
        async with client.prompt_run(graph) as run:
            await run.submit()
    # ComfyUI says only "Node ID '#3'"; the message names the node as our template does.
    assert caught.value.message == (
        'ComfyUI rejected the workflow: node 3 NoSuchNode "Qwen-Image VAE": '
        "Cannot execute because node NoSuchNode does not exist."
    )
    assert caught.value.nodes == ["3"]


async def test_partly_valid_graph_is_withdrawn_not_half_run(
    client: ComfyClient, comfy: FakeComfyUI
) -> None:
    graph = await _camera_graph(client)
    # A second output fed by a broken node: ComfyUI answers 200 and would run only the first.
    graph["20"] = {"class_type": "ImageInvert", "inputs": {"image": ["99", 0]}}
    graph["21"] = {
        "class_type": "SaveImage",
        "inputs": {"images": ["20", 0], "filename_prefix": "b"},
    }
    with pytest.raises(ComfyRejectedError, match="node 20 ImageInvert"):
        async with client.prompt_run(graph) as run:
            await run.submit()
    withdrawn = comfy.submitted[-1]["prompt_id"]
    assert withdrawn in comfy.queue_deletes
    await comfy.wait_idle()
    assert withdrawn not in {e.prompt_id for e in comfy.executions if e.status == "success"}


async def test_dropped_socket_mid_run_still_sees_completion(
    client: ComfyClient, comfy: FakeComfyUI
) -> None:
    graph = await _camera_graph(client)
    comfy.scripts.append(Script(exec_s=0.6, drop_ws_at=0.3))
    async with client.prompt_run(graph) as run:
        await run.submit()
        images = await run.wait()
    assert len(images) == 1
    assert run.reconnects >= 1
    assert comfy.ws_connects >= 2


async def test_socket_that_never_comes_back_falls_back_to_polling(
    client: ComfyClient, comfy: FakeComfyUI
) -> None:
    graph = await _camera_graph(client)
    # Upgrades are refused long past the reconnect budget (~0.5 s here).
    comfy.scripts.append(Script(exec_s=1.5, drop_ws_at=0.1, refuse_ws_s=30.0))
    async with client.prompt_run(graph) as run:
        await run.submit()
        images = await asyncio.wait_for(run.wait(), timeout=10)
    assert len(images) == 1
    assert run.polls >= 2


async def test_silent_socket_is_caught_by_history_polling(
    client: ComfyClient, comfy: FakeComfyUI
) -> None:
    graph = await _camera_graph(client)
    comfy.scripts.append(Script(exec_s=0.2, silent=True))
    async with client.prompt_run(graph) as run:
        await run.submit()
        images = await asyncio.wait_for(run.wait(), timeout=5)
    assert len(images) == 1
    assert run.polls >= 1


async def test_node_failing_at_run_time_is_permanent_and_named(
    client: ComfyClient, comfy: FakeComfyUI
) -> None:
    graph = await _camera_graph(client)
    comfy.scripts.append(Script(fail_node="13", exception_message="shape mismatch"))
    with pytest.raises(ComfyExecutionError) as caught:
        async with client.prompt_run(graph) as run:
            await run.submit()
            await run.wait()
    assert 'node 13 KSampler "Sampler $seed $steps $cfg"' in caught.value.message
    assert "RuntimeError: shape mismatch" in caught.value.message


async def test_out_of_memory_is_transient(client: ComfyClient, comfy: FakeComfyUI) -> None:
    graph = await _camera_graph(client)
    comfy.scripts.append(
        Script(
            fail_node="13",
            exception_type="torch.OutOfMemoryError",
            exception_message="Allocation on device",
        )
    )
    with pytest.raises(TransientJobError, match="node 13"):
        async with client.prompt_run(graph) as run:
            await run.submit()
            await run.wait()


async def test_unreachable_comfyui_is_transient_and_unhealthy(
    http: aiohttp.ClientSession, metrics: Metrics
) -> None:
    client = ComfyClient(f"http://127.0.0.1:{_free_port()}", http, options=FAST, metrics=metrics)
    with pytest.raises(ComfyUnavailableError) as caught:
        await client.upload_image(png_bytes(), "a.png")
    assert isinstance(caught.value, TransientJobError)
    assert "unreachable" in caught.value.message
    assert await client.healthy() is False
    assert client.reachable is False
    assert (
        _counter(
            metrics,
            "shortdrama_provider_errors_total",
            provider="comfyui",
            status_class="connection",
        )
        >= 1
    )
    with pytest.raises(ComfyUnavailableError):
        async with client.prompt_run({}):
            pass


async def test_server_error_is_transient(client: ComfyClient, comfy: FakeComfyUI) -> None:
    graph = await _camera_graph(client)
    comfy.fail_next["/prompt"] = 500
    with pytest.raises(ComfyUnavailableError, match="500"):
        async with client.prompt_run(graph) as run:
            await run.submit()
    assert await client.healthy() is True


async def test_cancel_while_running_interrupts_that_prompt(
    client: ComfyClient, comfy: FakeComfyUI
) -> None:
    graph = await _camera_graph(client)
    comfy.scripts.append(Script(exec_s=5.0))

    async def job() -> None:
        async with client.prompt_run(graph) as run:
            await run.submit()
            await run.wait()

    task = asyncio.create_task(job())
    running = await comfy.wait_running()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert running in comfy.interrupts
    await comfy.wait_idle(timeout=2)  # stopped long before its 5 s were up
    assert comfy.executions[-1].status == "interrupted"


async def test_cancel_while_pending_removes_it_from_the_queue(
    client: ComfyClient, comfy: FakeComfyUI
) -> None:
    graph = await _camera_graph(client)
    other = await _camera_graph(client, seed=2)
    # The first runs long enough that ours is still queued when cancelled.
    comfy.scripts.extend([Script(exec_s=3.0), Script(exec_s=0.2)])
    async with client.prompt_run(other) as first:
        await first.submit()

        async def job() -> str:
            async with client.prompt_run(graph) as run:
                await run.submit()
                await run.wait()
            return run.prompt_id

        task = asyncio.create_task(job())
        pending = (await comfy.wait_pending())[0]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await first.wait()
    assert pending in comfy.queue_deletes
    await comfy.wait_idle()
    assert pending not in {e.prompt_id for e in comfy.executions}
    # The other job's prompt ran to the end: the interrupt named only ours.
    assert comfy.executions[-1].status == "success"


async def test_prompt_interrupted_by_someone_else_is_transient(
    client: ComfyClient, comfy: FakeComfyUI, http: aiohttp.ClientSession
) -> None:
    graph = await _camera_graph(client)
    comfy.scripts.append(Script(exec_s=2.0))
    async with client.prompt_run(graph) as run:
        await run.submit()
        waiter = asyncio.create_task(run.wait())
        await comfy.wait_running()
        async with http.post(f"{comfy.url}/interrupt") as response:  # an operator in the UI
            assert response.status == 200
        with pytest.raises(ComfyInterruptedError):
            await waiter


async def test_restarted_comfyui_that_forgot_the_prompt_is_transient(
    client: ComfyClient, comfy: FakeComfyUI
) -> None:
    graph = await _camera_graph(client)
    comfy.scripts.append(Script(exec_s=3.0))
    async with client.prompt_run(graph) as run:
        await run.submit()
        waiter = asyncio.create_task(run.wait())
        await comfy.wait_running()
        await comfy.stop(lose_state=True)
        await comfy.start()
        with pytest.raises(ComfyPromptLostError) as caught:
            await asyncio.wait_for(waiter, timeout=10)
    assert isinstance(caught.value, TransientJobError)


async def test_comfyui_going_down_mid_run_is_transient(
    client: ComfyClient, comfy: FakeComfyUI
) -> None:
    graph = await _camera_graph(client)
    comfy.scripts.append(Script(exec_s=3.0))
    async with client.prompt_run(graph) as run:
        await run.submit()
        waiter = asyncio.create_task(run.wait())
        await comfy.wait_running()
        await comfy.stop()
        with pytest.raises(ComfyUnavailableError):
            await asyncio.wait_for(waiter, timeout=10)
