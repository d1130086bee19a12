"""Faults on purpose: AWS going away, S3 refusing results. Nothing may be lost."""

from __future__ import annotations

import asyncio
import base64
import io
import socket
from typing import Any

from moto.server import ThreadedMotoServer
from PIL import Image
from support import ScriptedHandler, eventually, submit, wait_for

from shortdrama_worker import keys
from shortdrama_worker.plugins import HandlerRegistry


def registry() -> HandlerRegistry:
    return HandlerRegistry.from_classes({"scripted": ScriptedHandler})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def health(client: Any) -> dict[str, Any]:
    return dict(await (await client.get("/health")).json())


async def test_aws_endpoint_down_for_seconds_then_everything_recovers(
    make_settings: Any, start_app: Any
) -> None:
    port = free_port()
    endpoint = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    endpoint.start()
    settings = make_settings(
        aws={"endpoint_url": f"http://127.0.0.1:{port}", "connect_timeout_s": 1},
    )
    _, client = await start_app(settings, registry())
    before = await submit(client, "scripted", {})
    assert (await wait_for(client, before))["status"] == "completed"

    endpoint.stop()  # moto keeps its state in the process; only the endpoint goes
    try:
        refused = await client.post("/api/v1/scripted/jobs", json={})
        assert refused.status == 503
        assert (await refused.json())["error"]["code"] == "store_unavailable"
        report = await health(client)
        assert report["status"] == "degraded"
        assert report["checks"]["dynamodb"] == "degraded"

        async def sqs_degraded() -> bool:
            return (await health(client))["checks"].get("sqs") == "degraded"

        await eventually(sqs_degraded)
        await asyncio.sleep(2)  # down for several seconds while the consumer backs off
    finally:
        endpoint = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        endpoint.start()
    try:

        async def healthy() -> bool:
            return (await health(client))["status"] == "healthy"

        await eventually(healthy, timeout=40)
        after = await submit(client, "scripted", {})
        assert (await wait_for(client, after, timeout=30))["status"] == "completed"
        assert (await wait_for(client, before))["status"] == "completed"
    finally:
        await client.close()
        endpoint.stop()


async def test_s3_refusing_results_is_retried_and_never_completed_without_one(
    make_settings: Any, start_app: Any, aws: Any
) -> None:
    # A retry delay of a few seconds leaves time to see the job waiting and to
    # bring the bucket back before its second attempt.
    settings = make_settings(
        consumer={"backoff_base_s": 3.0, "backoff_max_s": 5.0, "max_attempts": 3}
    )
    app, client = await start_app(settings, registry())
    bucket = settings.results.bucket
    await aws.s3.delete_bucket(Bucket=bucket)
    job_id = await submit(client, "scripted", {})

    async def retry_scheduled() -> bool:
        job = await (await client.get(f"/api/v1/jobs/{job_id}")).json()
        assert job["status"] != "completed", "completed without a stored result"
        return bool(job["attempts"] >= 1 and job["status"] == "pending")

    await eventually(retry_scheduled)
    job = await (await client.get(f"/api/v1/jobs/{job_id}")).json()
    assert job["error"] is None  # not failed: waiting for its next attempt
    assert "S3 put" in job["error_message"]
    await aws.s3.create_bucket(Bucket=bucket)
    done = await wait_for(client, job_id, timeout=20)
    assert done["status"] == "completed"
    assert done["attempts"] == 2
    handler = app[keys.HANDLERS]["scripted"]
    assert isinstance(handler, ScriptedHandler)
    assert handler.finished == [job_id]


async def test_a_provider_down_for_every_attempt_fails_the_job_into_the_dlq(
    make_settings: Any, start_app: Any, aws: Any
) -> None:
    import base64
    import io
    import json

    from PIL import Image

    from shortdrama_worker.handlers.face_swap import FaceSwapHandler

    down = {
        "base_url": "http://127.0.0.1:9/api/v3",  # nothing listens: connection refused
        "api_key": "k",
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.02,
        "requests_per_minute": 0,
    }
    settings = make_settings(
        consumer={"max_attempts": 2},
        handlers={"options": {"face_swap": {"ark": down}}},
    )
    registry = HandlerRegistry.from_classes({"face_swap": FaceSwapHandler})
    app, client = await start_app(settings, registry)
    buffer = io.BytesIO()
    Image.new("RGB", (1280, 720), (120, 90, 60)).save(buffer, format="PNG")
    image = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    consent = {"release_form": "RF-1", "attested_by": "casting"}
    payload = {"masked_image": image, "target_face": image, "target_face_consent": consent}
    job_id = await submit(client, "face-swap", payload)
    job = await wait_for(client, job_id, timeout=30)
    assert job["status"] == "failed"
    assert job["attempts"] == 2
    assert job["error_message"].startswith("gave up after 2 attempts: ")
    assert "Seedream" in job["error_message"] or "ARK" in job["error_message"]
    dlq = app[keys.QUEUE].url("cpu", dlq=True)
    reply = await aws.sqs.receive_message(QueueUrl=dlq, WaitTimeSeconds=1)
    assert [json.loads(m["Body"])["task_id"] for m in reply["Messages"]] == [job_id]


async def test_s3_down_while_staging_inputs_refuses_the_submit_and_writes_nothing(
    make_settings: Any, start_app: Any, aws: Any
) -> None:
    settings = make_settings()
    _, client = await start_app(settings, registry())
    await aws.s3.delete_bucket(Bucket=settings.results.bucket)
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 20, 30)).save(buffer, format="PNG")
    png = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    resp = await client.post("/api/v1/scripted/jobs", json={"image_url": png})
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "storage_unavailable"
    scan = await aws.dynamodb.scan(TableName=settings.store.table)
    # Task records only: the table also keeps the job-id secret.
    assert [item for item in scan["Items"] if "job_type" in item] == []


async def test_dynamodb_throttling_is_absorbed_by_retries(
    make_settings: Any, start_app: Any, moto_endpoint: str
) -> None:
    from fakes.faultproxy import THROTTLED, FaultProxy

    async with FaultProxy(moto_endpoint) as proxy:
        settings = make_settings(aws={"endpoint_url": proxy.url})
        _, client = await start_app(settings, registry())
        # Two throttled answers in a row on the writes of the dispatch path:
        # within botocore's standard retry budget (3 attempts).
        proxy.fail("PutItem", 2, THROTTLED)
        proxy.fail("UpdateItem", 2, THROTTLED)
        job_id = await submit(client, "scripted", {})
        job = await wait_for(client, job_id)
        assert job["status"] == "completed"
        assert job["attempts"] == 1
        assert proxy.failed == {"PutItem": 2, "UpdateItem": 2}
        await client.close()  # drain while the proxy still stands


async def test_a_failed_delete_after_completion_is_settled_by_the_redelivery(
    make_settings: Any, start_app: Any, moto_endpoint: str
) -> None:
    from fakes.faultproxy import INTERNAL, FaultProxy

    async with FaultProxy(moto_endpoint) as proxy:
        settings = make_settings(
            aws={"endpoint_url": proxy.url}, queues={"visibility_timeout_s": 5}
        )
        app, client = await start_app(settings, registry())
        # More failures than botocore retries: the delete really fails.
        proxy.fail("DeleteMessage", 3, INTERNAL)
        job_id = await submit(client, "scripted", {})
        assert (await wait_for(client, job_id))["status"] == "completed"

        async def redelivered_and_deleted() -> bool:
            return proxy.seen["DeleteMessage"] >= 4

        await eventually(redelivered_and_deleted, timeout=20)
        handler = app[keys.HANDLERS]["scripted"]
        assert isinstance(handler, ScriptedHandler)
        assert handler.runs == [(job_id, 1)], "the redelivered message did not run it again"
        attrs = await app[keys.AWS].sqs.get_queue_attributes(
            QueueUrl=app[keys.QUEUE].url("cpu"),
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )
        assert attrs["Attributes"]["ApproximateNumberOfMessages"] == "0"
        assert attrs["Attributes"]["ApproximateNumberOfMessagesNotVisible"] == "0"
        await client.close()


async def test_a_submit_whose_putitem_answer_was_lost_is_still_queued(
    make_settings: Any, start_app: Any, moto_endpoint: str
) -> None:
    from fakes.faultproxy import INTERNAL, FaultProxy

    async with FaultProxy(moto_endpoint) as proxy:
        _, client = await start_app(make_settings(aws={"endpoint_url": proxy.url}), registry())
        # Start-up wrote the job-id secret; count only the submit's writes.
        before = proxy.seen.get("PutItem", 0)
        # The record lands, the answer is lost; the client's retry finds it already there.
        proxy.fail("PutItem", 1, INTERNAL, after=True)
        resp = await client.post("/api/v1/scripted/jobs", json={})
        assert resp.status == 202
        job = await wait_for(client, (await resp.json())["job_id"], timeout=15)
        assert job["status"] == "completed", "the job was queued, not left pending"
        assert proxy.seen["PutItem"] - before == 2
        await client.close()
