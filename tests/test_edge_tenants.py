"""Tenants' objects stay theirs: s3:// ownership, unpredictable job ids, untouched inputs,
and one owner per process lifetime."""

from __future__ import annotations

import base64
import io
import uuid
from typing import Any

import pytest
from PIL import Image
from support import ScriptedHandler, eventually, submit, wait_for

from shortdrama_worker import keys
from shortdrama_worker.jobs.submission import derive_job_id
from shortdrama_worker.plugins import HandlerRegistry
from shortdrama_worker.web.auth import digest

ALICE, BOB = "sdw_alice_key", "sdw_bob_key"


def registry() -> HandlerRegistry:
    return HandlerRegistry.from_classes({"scripted": ScriptedHandler})


def png_uri(colour: tuple[int, int, int], size: tuple[int, int] = (32, 24)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def tenants(make_settings: Any, start_app: Any) -> Any:
    settings = make_settings(
        auth={
            "enabled": True,
            "keys": [
                {"id": "alice", "sha256": digest(ALICE)},
                {"id": "bob", "sha256": digest(BOB)},
            ],
        },
        inputs={"s3_buckets": ["shared-assets"]},
    )
    app, client = await start_app(settings, registry())
    return app, client


async def staged_ref(app: Any, job_id: str) -> str:
    task = await app[keys.STORE].get(job_id)
    ref: str = task.input["image_url"]
    assert ref.startswith("s3://")
    return ref


async def test_a_key_cannot_read_another_keys_inputs_or_results_through_s3(tenants: Any) -> None:
    app, client = tenants
    resp = await client.post(
        "/api/v1/scripted/jobs", json={"image_url": png_uri((200, 10, 10))}, headers=bearer(ALICE)
    )
    alice_job = (await resp.json())["job_id"]
    job = await wait_for_as(client, alice_job, ALICE)
    assert job["status"] == "completed"
    bucket = app[keys.SETTINGS].results.bucket
    stolen = [
        await staged_ref(app, alice_job),
        f"s3://{bucket}/{job['result']['key']}",
        f"s3://{bucket}/inputs/{alice_job}/x/image_url",
    ]
    for ref in stolen:
        resp = await client.post(
            "/api/v1/scripted/jobs", json={"image_url": ref}, headers=bearer(BOB)
        )
        assert resp.status == 422, ref
        error = (await resp.json())["error"]
        assert error["fields"][0]["field"] == "image_url"
        assert "is not a staged input or result of a job this API key may read" in error["message"]
    # A job that does not exist reads the same as another key's.
    missing = f"s3://{bucket}/inputs/{uuid.uuid4()}/x/image_url"
    resp = await client.post(
        "/api/v1/scripted/jobs", json={"image_url": missing}, headers=bearer(BOB)
    )
    assert resp.status == 422
    # Objects outside the job layout are nobody's to read through s3://.
    resp = await client.post(
        "/api/v1/scripted/jobs",
        json={"image_url": f"s3://{bucket}/config/x.png"},
        headers=bearer(ALICE),
    )
    assert resp.status == 422
    # Alice may reuse her own result as an input.
    resp = await client.post(
        "/api/v1/scripted/jobs", json={"image_url": stolen[0]}, headers=bearer(ALICE)
    )
    assert resp.status == 202
    assert (await wait_for_as(client, (await resp.json())["job_id"], ALICE))[
        "status"
    ] == "completed"
    # A bucket the operator listed is open to every key (and still checked for form).
    ok = await client.post(
        "/api/v1/scripted/jobs",
        json={"image_url": "s3://shared-assets/frames/a.png"},
        headers=bearer(BOB),
    )
    assert ok.status == 202
    dots = await client.post(
        "/api/v1/scripted/jobs",
        json={"image_url": f"s3://{bucket}/inputs/{alice_job}/../../results/x"},
        headers=bearer(BOB),
    )
    assert dots.status == 422


async def wait_for_as(client: Any, job_id: str, key: str) -> dict[str, Any]:
    result: dict[str, Any] = {}

    async def done() -> bool:
        resp = await client.get(f"/api/v1/jobs/{job_id}", headers=bearer(key))
        result.update(await resp.json())
        return result.get("status") in ("completed", "failed", "cancelled")

    await eventually(done, what=f"job {job_id} finished")
    return result


async def test_job_ids_from_idempotency_keys_cannot_be_computed_without_the_secret(
    tenants: Any,
) -> None:
    app, client = tenants
    headers = {**bearer(ALICE), "Idempotency-Key": "frame-0042"}
    resp = await client.post("/api/v1/scripted/jobs", json={}, headers=headers)
    job_id = (await resp.json())["job_id"]
    # The old derivation, uuid5 of public values, no longer predicts it.
    ns = uuid.UUID("6f1d7a3e-5b0c-4a59-9c61-2f3a8e1f4b20")
    assert job_id != str(uuid.uuid5(ns, "alice\nscripted\nframe-0042"))
    assert job_id == derive_job_id(app[keys.JOB_ID_SECRET], app[keys.SETTINGS].auth.keys[0],
                                   "scripted", "frame-0042")  # fmt: skip
    assert len(app[keys.JOB_ID_SECRET]) >= 32


async def test_instances_sharing_a_table_share_the_generated_secret(
    make_settings: Any, start_app: Any
) -> None:
    settings = make_settings(consumer={"enabled": False})
    first, client_a = await start_app(settings, registry())
    second, client_b = await start_app(settings, registry())
    assert first[keys.JOB_ID_SECRET] == second[keys.JOB_ID_SECRET]
    headers = {"Idempotency-Key": "shot-7"}
    a = await (await client_a.post("/api/v1/scripted/jobs", json={}, headers=headers)).json()
    b = await client_b.post("/api/v1/scripted/jobs", json={}, headers=headers)
    assert b.headers["Idempotent-Replayed"] == "true"
    assert (await b.json())["job_id"] == a["job_id"]
    # The secret's record is not a job.
    assert (await client_a.get("/api/v1/jobs/__secret__job_ids")).status == 404
    configured = make_settings(api={"job_id_secret": "s3cret-from-the-vault"})
    app, _ = await start_app(configured, registry())
    assert app[keys.JOB_ID_SECRET] == b"s3cret-from-the-vault"


async def test_a_refused_idempotent_submit_leaves_the_first_jobs_input_untouched(
    make_settings: Any, start_app: Any, aws: Any
) -> None:
    settings = make_settings(consumer={"enabled": False})
    app, client = await start_app(settings, registry())
    headers = {"Idempotency-Key": "frame-0007"}
    first = await client.post(
        "/api/v1/scripted/jobs", json={"image_url": png_uri((255, 0, 0))}, headers=headers
    )
    assert first.status == 202
    job_id = (await first.json())["job_id"]
    ref = await staged_ref(app, job_id)
    bucket, key = ref[5:].split("/", 1)
    original = await (await aws.s3.get_object(Bucket=bucket, Key=key))["Body"].read()

    second = await client.post(
        "/api/v1/scripted/jobs", json={"image_url": png_uri((0, 0, 255))}, headers=headers
    )
    assert second.status == 422
    assert (await second.json())["error"]["code"] == "idempotency_key_reused"
    after = await (await aws.s3.get_object(Bucket=bucket, Key=key))["Body"].read()
    assert after == original
    # A replay with the same body stages nothing that lingers either.
    replay = await client.post(
        "/api/v1/scripted/jobs", json={"image_url": png_uri((255, 0, 0))}, headers=headers
    )
    assert replay.headers["Idempotent-Replayed"] == "true"
    listed = await aws.s3.list_objects_v2(Bucket=bucket, Prefix=f"inputs/{job_id}/")
    assert [o["Key"] for o in listed["Contents"]] == [key]


@pytest.mark.slow
async def test_two_processes_configured_with_one_instance_id_never_run_a_job_twice(
    make_settings: Any, start_app: Any
) -> None:
    # One slot and no prefetch: the first instance, busy, takes nothing more,
    # so the duplicate message can only reach the second.
    settings = make_settings(
        instance_id="worker-a",
        consumer={"max_in_flight": {"cpu": 1, "gpu": 1}, "prefetch": {"cpu": 0, "gpu": 0}},
    )
    first_registry, second_registry = registry(), registry()
    first, client = await start_app(settings, first_registry)
    job_id = await submit(client, "scripted", {"sleep_s": 3.0})
    await wait_for(client, job_id, ("processing",))
    second, _ = await start_app(settings, second_registry)
    assert first[keys.RUNNER].owner != second[keys.RUNNER].owner
    assert first[keys.RUNNER].owner.startswith("worker-a/")
    await first[keys.QUEUE].send("cpu", job_id, "scripted")  # a duplicate delivery
    assert (await wait_for(client, job_id))["status"] == "completed"
    runs = [
        run
        for app in (first, second)
        for run in app[keys.HANDLERS]["scripted"].runs  # type: ignore[attr-defined]
    ]
    assert runs == [(job_id, 1)]
