"""The consumer's promises: every job ends exactly once, with its result or a reason."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import web
from support import GpuProbeHandler, ScriptedHandler, SlowHandler, eventually, submit, wait_for

from shortdrama_worker import keys
from shortdrama_worker.aws.queue import encode
from shortdrama_worker.plugins import HandlerRegistry


def registry() -> HandlerRegistry:
    return HandlerRegistry.from_classes(
        {"scripted": ScriptedHandler, "slow": SlowHandler, "gpu_probe": GpuProbeHandler}
    )


def scripted(app: web.Application) -> ScriptedHandler:
    handler = app[keys.HANDLERS]["scripted"]
    assert isinstance(handler, ScriptedHandler)
    return handler


async def dlq_bodies(aws: Any, app: web.Application, resource: str = "cpu") -> list[dict[str, Any]]:
    url = app[keys.QUEUE].url(resource, dlq=True)  # type: ignore[arg-type]
    reply = await aws.sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1, MessageAttributeNames=["All"]
    )
    return [
        {
            "body": m["Body"],
            "reason": m.get("MessageAttributes", {}).get("reason", {}).get("StringValue"),
        }
        for m in reply.get("Messages", [])
    ]


async def test_transient_error_is_retried_then_succeeds(make_settings: Any, start_app: Any) -> None:
    app, client = await start_app(make_settings(), registry())
    job = await wait_for(client, await submit(client, "scripted", {"fail_times": 1}))
    assert job["status"] == "completed"
    assert job["attempts"] == 2
    assert job["result"]["attempt"] == 2
    assert job["error_message"] is None
    assert len(scripted(app).runs) == 2


async def test_permanent_error_fails_at_once_with_its_message(
    make_settings: Any, start_app: Any
) -> None:
    app, client = await start_app(make_settings(), registry())
    job = await wait_for(client, await submit(client, "scripted", {"permanent": "bad frame"}))
    assert job["status"] == "failed"
    assert job["error_message"] == "bad frame"
    assert job["error"] == {"code": "scripted", "message": "bad frame"}
    assert job["attempts"] == 1
    assert len(scripted(app).runs) == 1


async def test_out_of_attempts_fails_and_the_message_reaches_the_dlq(
    make_settings: Any, start_app: Any, aws: Any
) -> None:
    app, client = await start_app(make_settings(consumer={"max_attempts": 2}), registry())
    job_id = await submit(client, "scripted", {"fail_times": 5})
    job = await wait_for(client, job_id)
    assert job["status"] == "failed"
    assert job["attempts"] == 2
    assert "gave up after 2 attempts" in job["error_message"]
    assert "flaky dependency" in job["error_message"]
    dead = await dlq_bodies(aws, app)
    assert [json.loads(d["body"])["task_id"] for d in dead] == [job_id]
    assert "gave up" in dead[0]["reason"]


async def test_redelivered_message_of_a_finished_job_is_not_rerun(
    make_settings: Any, start_app: Any, aws: Any
) -> None:
    app, client = await start_app(make_settings(), registry())
    job_id = await submit(client, "scripted", {})
    await wait_for(client, job_id)
    # SQS delivers at least once: the same message arrives again.
    await aws.sqs.send_message(
        QueueUrl=app[keys.QUEUE].url("cpu"), MessageBody=encode(job_id, "scripted")
    )

    async def queue_empty() -> bool:
        attrs = await aws.sqs.get_queue_attributes(
            QueueUrl=app[keys.QUEUE].url("cpu"),
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )
        return bool(
            attrs["Attributes"]
            == {"ApproximateNumberOfMessages": "0", "ApproximateNumberOfMessagesNotVisible": "0"}
        )

    # The duplicate is received and deleted without a second run.
    await eventually(queue_empty, what="the duplicate deleted")
    assert len(scripted(app).runs) == 1


async def test_malformed_message_goes_to_the_dlq_and_the_consumer_goes_on(
    make_settings: Any, start_app: Any, aws: Any
) -> None:
    app, client = await start_app(make_settings(), registry())
    await aws.sqs.send_message(QueueUrl=app[keys.QUEUE].url("cpu"), MessageBody="{not json")
    job = await wait_for(client, await submit(client, "scripted", {}))
    assert job["status"] == "completed"
    dead = await dlq_bodies(aws, app)
    assert dead[0]["body"] == "{not json"
    assert "malformed message" in dead[0]["reason"]


async def test_a_job_longer_than_the_visibility_timeout_runs_once(
    make_settings: Any, start_app: Any
) -> None:
    settings = make_settings(queues={"visibility_timeout_s": 5})
    app, client = await start_app(settings, registry())
    # A second instance polls the same queue the whole time.
    other, _ = await start_app(settings, registry())
    job = await wait_for(client, await submit(client, "scripted", {"sleep_s": 8}), timeout=30)
    assert job["status"] == "completed"
    assert job["attempts"] == 1
    assert len(scripted(app).runs) + len(scripted(other).runs) == 1
    text = await (await client.get("/metrics")).text()
    other_text = other[keys.METRICS]
    heartbeats = (
        other_text.heartbeats.labels("cpu")._value.get()
        + app[keys.METRICS].heartbeats.labels("cpu")._value.get()
    )
    assert heartbeats >= 1, text


async def test_two_instances_finish_every_job_exactly_once(
    make_settings: Any, start_app: Any
) -> None:
    settings = make_settings()
    first, client = await start_app(settings, registry())
    second, _ = await start_app(settings, registry())
    job_ids = [await submit(client, "scripted", {"sleep_s": 0.1}) for _ in range(24)]
    jobs = [await wait_for(client, job_id, timeout=60) for job_id in job_ids]
    assert {j["status"] for j in jobs} == {"completed"}
    finished = scripted(first).finished + scripted(second).finished
    assert sorted(finished) == sorted(job_ids)
    assert scripted(first).finished and scripted(second).finished, "both instances took work"


async def test_cancel_pending_job_never_starts(make_settings: Any, start_app: Any) -> None:
    app, client = await start_app(make_settings(consumer={"enabled": False}), registry())
    job_id = await submit(client, "scripted", {})
    resp = await client.delete(f"/api/v1/jobs/{job_id}")
    assert resp.status == 202
    assert (await resp.json())["status"] == "cancelled"
    # A consumer that starts later finds the job cancelled and drops its message.
    worker, _ = await start_app(
        app[keys.SETTINGS].model_copy(update={"consumer": make_settings().consumer}), registry()
    )
    await asyncio.sleep(2)
    assert scripted(worker).runs == []
    assert (await wait_for(client, job_id))["status"] == "cancelled"
    again = await client.delete(f"/api/v1/jobs/{job_id}")
    assert again.status == 409


async def test_cancel_running_job_interrupts_it(make_settings: Any, start_app: Any) -> None:
    app, client = await start_app(make_settings(), registry())
    job_id = await submit(client, "scripted", {"sleep_s": 20})
    await wait_for(client, job_id, ("processing",))
    await asyncio.sleep(0.2)
    assert (await client.delete(f"/api/v1/jobs/{job_id}")).status == 202
    job = await wait_for(client, job_id, timeout=5)
    assert job["status"] == "cancelled"
    assert scripted(app).cancelled == [job_id]


async def test_cancel_reaches_a_job_running_on_another_instance(
    make_settings: Any, start_app: Any
) -> None:
    settings = make_settings()
    worker, _ = await start_app(settings, registry())
    api_only = settings.model_copy(
        update={"consumer": settings.consumer.model_copy(update={"enabled": False})}
    )
    _, client = await start_app(api_only, registry())
    job_id = await submit(client, "scripted", {"sleep_s": 20})
    await wait_for(client, job_id, ("processing",))
    assert (await client.delete(f"/api/v1/jobs/{job_id}")).status == 202
    job = await wait_for(client, job_id, timeout=5)
    assert job["status"] == "cancelled"
    assert scripted(worker).cancelled == [job_id]


async def test_handler_timeout_fails_the_job(make_settings: Any, start_app: Any) -> None:
    _, client = await start_app(make_settings(), registry())
    job = await wait_for(client, await submit(client, "slow", {"sleep_s": 5}))
    assert job["status"] == "failed"
    assert job["error"]["code"] == "timeout"
    assert "timed out after 1 s" in job["error_message"]


async def test_unreachable_input_fails_naming_the_url_after_bounded_retries(
    make_settings: Any, start_app: Any
) -> None:
    _, client = await start_app(make_settings(consumer={"max_attempts": 2}), registry())
    url = "http://127.0.0.1:9/frame.png"  # discard port: connection refused
    job = await wait_for(client, await submit(client, "scripted", {"image_url": url}))
    assert job["status"] == "failed"
    assert job["attempts"] == 2
    assert "image_url" in job["error_message"] and url in job["error_message"]


@pytest.fixture
async def image_server() -> Any:
    """A plain HTTP server for input images."""
    import io

    from aiohttp.test_utils import TestServer
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), "red").save(buffer, format="PNG")

    async def png(_: web.Request) -> web.Response:
        return web.Response(body=buffer.getvalue(), content_type="image/png")

    async def html(_: web.Request) -> web.Response:
        return web.Response(text="<html>", content_type="text/html")

    async def corrupt(_: web.Request) -> web.Response:
        return web.Response(body=b"\x89PNG\r\n\x1a\nnot really", content_type="image/png")

    app = web.Application()
    app.router.add_get("/frame.png", png)
    app.router.add_get("/page.html", html)
    app.router.add_get("/broken.png", corrupt)
    server = TestServer(app)
    await server.start_server()
    yield server
    await server.close()


async def test_http_inputs_are_fetched_and_decoded(
    make_settings: Any, start_app: Any, image_server: Any
) -> None:
    _, client = await start_app(make_settings(), registry())
    url = str(image_server.make_url("/frame.png"))
    job = await wait_for(client, await submit(client, "scripted", {"image_url": url}))
    assert job["status"] == "completed"
    assert job["result"]["size"] == [64, 48]


@pytest.mark.parametrize(
    ("path", "reason"),
    [("/page.html", "is text/html, not an image"), ("/broken.png", "corrupt image"),
     ("/missing.png", "answered HTTP 404")],
)  # fmt: skip
async def test_non_image_input_fails_at_once_naming_the_url(
    make_settings: Any, start_app: Any, image_server: Any, path: str, reason: str
) -> None:
    _, client = await start_app(make_settings(), registry())
    url = str(image_server.make_url(path))
    job = await wait_for(client, await submit(client, "scripted", {"image_url": url}))
    assert job["status"] == "failed"
    assert job["attempts"] == 1
    assert job["error_message"].startswith("image_url: ")
    assert reason in job["error_message"]


async def test_gpu_semaphore_is_held_only_around_the_gpu_section(
    make_settings: Any, start_app: Any
) -> None:
    settings = make_settings(gpu={"slots": 1}, consumer={"max_in_flight": {"gpu": 3, "cpu": 4}})
    app, client = await start_app(settings, registry())
    job_ids = [await submit(client, "gpu-probe", {"prep_s": 0.5, "gpu_s": 0.3}) for _ in range(3)]
    for job_id in job_ids:
        assert (await wait_for(client, job_id))["status"] == "completed"
    probe = app[keys.HANDLERS]["gpu_probe"]
    assert isinstance(probe, GpuProbeHandler)
    assert probe.max_in_gpu == 1, "one slot: never two jobs in the GPU section"
    assert probe.max_concurrent_jobs >= 2, "downloads/uploads overlap another job's GPU work"


async def test_shutdown_mid_job_hands_it_to_another_instance(
    make_settings: Any, start_app: Any
) -> None:
    settings = make_settings(consumer={"shutdown_grace_s": 0.5})
    first, client = await start_app(settings, registry())
    job_id = await submit(client, "scripted", {"sleep_s": 3})
    await wait_for(client, job_id, ("processing",))
    consumer = first[keys.CONSUMER]
    assert consumer is not None
    stopping = asyncio.create_task(consumer.stop())
    await asyncio.sleep(0.1)
    assert (await client.get("/ready")).status == 503
    await stopping
    returned = await (await client.get(f"/api/v1/jobs/{job_id}")).json()
    assert returned["status"] == "pending"
    assert returned["attempts"] == 0, "an interrupted attempt is not counted"

    second, _ = await start_app(settings, registry())
    job = await wait_for(client, job_id, timeout=15)
    assert job["status"] == "completed"
    assert scripted(first).cancelled == [job_id]
    assert scripted(second).finished == [job_id]


async def test_shutdown_during_a_burst_ends_every_job_exactly_once(
    make_settings: Any, start_app: Any
) -> None:
    settings = make_settings(consumer={"shutdown_grace_s": 0.3})
    first, client = await start_app(settings, registry())
    job_ids = [await submit(client, "scripted", {"sleep_s": 1.0}) for _ in range(20)]
    # Stop once some are done: four run at a time, so most are still queued
    # or running however long the submits took.
    await eventually(lambda: bool(scripted(first).finished), what="a first finished job")
    consumer = first[keys.CONSUMER]
    assert consumer is not None
    await consumer.stop()
    second, _ = await start_app(settings, registry())
    jobs = [await wait_for(client, job_id, timeout=40) for job_id in job_ids]
    assert {j["status"] for j in jobs} == {"completed"}
    finished = scripted(first).finished + scripted(second).finished
    assert sorted(finished) == sorted(job_ids), "each job finished once, none twice"
    assert scripted(first).finished, "the first instance did some of the work"
    assert scripted(second).finished, "the second took over the rest"


async def test_a_job_whose_message_was_lost_is_requeued_and_completes(
    make_settings: Any, start_app: Any
) -> None:
    import time

    from shortdrama_worker.aws.store import Task

    settings = make_settings(consumer={"stale_after_s": 60, "reconcile_interval_s": 0})
    app, client = await start_app(settings, registry())
    store = app[keys.STORE]
    old = time.time() - 600
    # A record with no message: its PutItem answered too late, or its message was redriven.
    await store.create(Task("orphan-pending", "scripted", "pending", old, old, input={}))
    # A job whose worker died long ago and whose message is gone.
    dead = Task("orphan-running", "scripted", "processing", old, old, input={}, attempts=1,
                owner="gone:1", lease_until=old + 60)  # fmt: skip
    await store.create(dead)
    # A fresh pending job is not an orphan: its message is simply still queued.
    fresh = time.time()
    await store.create(Task("young-pending", "scripted", "pending", fresh, fresh, input={}))

    reconciler = app[keys.RECONCILER]
    assert await reconciler.reconcile_once() == 2
    assert await reconciler.reconcile_once() == 0, "a re-queued job is not re-queued again at once"
    for job_id in ("orphan-pending", "orphan-running"):
        assert (await wait_for(client, job_id))["status"] == "completed"
    assert (await store.get("young-pending")).status == "pending"


async def test_shutdown_with_every_slot_busy_keeps_to_the_grace_period(
    make_settings: Any, start_app: Any
) -> None:
    settings = make_settings(
        consumer={"shutdown_grace_s": 0.5, "max_in_flight": {"gpu": 1, "cpu": 1}}
    )
    app, client = await start_app(settings, registry())
    job_id = await submit(client, "scripted", {"sleep_s": 30})
    await wait_for(client, job_id, ("processing",))
    consumer = app[keys.CONSUMER]
    assert consumer is not None
    # The only slot is busy; stopping must not wait for the 30 s job.
    await asyncio.wait_for(consumer.stop(), timeout=10)
    job = await (await client.get(f"/api/v1/jobs/{job_id}")).json()
    assert job["status"] == "pending", "handed back within the grace period"


async def test_a_cancel_that_arrives_as_the_run_fails_is_not_retried(
    make_settings: Any, start_app: Any
) -> None:
    # The worker's heartbeat looks for cancels only every few seconds; the
    # run fails (transiently) before it would have noticed.
    settings = make_settings(consumer={"cancel_poll_s": 30})
    worker, _ = await start_app(settings, registry())
    api_only = settings.model_copy(
        update={"consumer": settings.consumer.model_copy(update={"enabled": False})}
    )
    _, client = await start_app(api_only, registry())
    job_id = await submit(client, "scripted", {"fail_times": 5, "sleep_s": 1.0})
    await wait_for(client, job_id, ("processing",))
    assert (await client.delete(f"/api/v1/jobs/{job_id}")).status == 202
    job = await wait_for(client, job_id, timeout=10)
    assert job["status"] == "cancelled"
    assert len(scripted(worker).runs) == 1, "not run again after the cancel"


async def test_waiting_for_a_kind_cap_does_not_count_against_the_timeout(
    make_settings: Any, start_app: Any
) -> None:
    settings = make_settings(consumer={"kind_concurrency": {"slow": 1}})
    _, client = await start_app(settings, registry())
    # SlowHandler allows 1 s per run; the second job waits 0.7 s for the cap first.
    first = await submit(client, "slow", {"sleep_s": 0.7})
    second = await submit(client, "slow", {"sleep_s": 0.7})
    assert (await wait_for(client, first))["status"] == "completed"
    assert (await wait_for(client, second))["status"] == "completed"
