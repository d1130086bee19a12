"""``Prefer: wait=N`` on submit and status, and the job's event stream."""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace
from typing import Any

import pytest
from fakes.comfyui import png_bytes
from support import ScriptedHandler, eventually, submit, wait_for

from shortdrama_worker import keys
from shortdrama_worker.contract.testing import data_uri
from shortdrama_worker.plugins import HandlerRegistry

IMAGE = data_uri(png_bytes(5))


def registry() -> HandlerRegistry:
    return HandlerRegistry.from_classes({"scripted": ScriptedHandler})


@pytest.fixture
async def started(make_settings: Any, start_app: Any) -> Any:
    return await start_app(make_settings(api={"max_wait_s": 5}), registry())


async def test_submit_waits_and_answers_200_with_the_finished_job(started: Any) -> None:
    _, api = started
    resp = await api.post(
        "/api/v1/scripted/jobs", json={"sleep_s": 0.3}, headers={"Prefer": "wait=10"}
    )
    assert resp.status == 200, await resp.text()
    assert resp.headers["Preference-Applied"] == "wait=5"  # bounded by api.max_wait_s
    job = await resp.json()
    assert job["status"] == "completed"
    assert job["files"][0]["name"] == "out.txt"
    assert resp.headers["Location"].endswith(job["job_id"])


async def test_a_job_that_outlasts_the_wait_is_answered_202_after_it(started: Any) -> None:
    _, api = started
    began = time.monotonic()
    resp = await api.post(
        "/api/v1/scripted/jobs", json={"sleep_s": 3}, headers={"Prefer": "respond-async, wait=1"}
    )
    assert resp.status == 202
    assert time.monotonic() - began >= 1
    assert resp.headers["Preference-Applied"] == "wait=1"
    body = await resp.json()
    assert body["status"] == "pending"
    await wait_for(api, body["job_id"])


async def test_status_waits_for_the_end_and_other_instances_finishes_are_seen(
    make_settings: Any, start_app: Any
) -> None:
    # The job runs on a second instance, so nothing in the first one's
    # process announces its end: it must be seen in the store.
    settings = make_settings(api={"max_wait_s": 10})
    _, api = await start_app(
        settings.model_copy(
            update={"consumer": settings.consumer.model_copy(update={"enabled": False})}
        ),
        registry(),
    )
    await start_app(settings, registry())
    job_id = await submit(api, "scripted", {"sleep_s": 0.5})
    resp = await api.get(f"/api/v1/jobs/{job_id}", headers={"Prefer": "wait=8"})
    assert resp.status == 200
    assert (await resp.json())["status"] == "completed"
    assert resp.headers["Preference-Applied"] == "wait=8"


async def test_a_wait_on_a_job_run_here_reads_its_record_once(
    make_settings: Any, start_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The writes of the instance that runs the job hand the waiter the record
    # as written (claim, progress, completion): reading it back after each
    # would only load the store. (No timed re-read within this test: those
    # are for changes made by other instances.)
    monkeypatch.setattr("shortdrama_worker.jobs.watch._FIRST_POLL_S", 30.0)
    app, api = await start_app(make_settings(api={"max_wait_s": 10}), registry())
    store = app[keys.STORE]
    reads: list[str] = []
    get = store.get

    async def counting_get(task_id: str) -> Any:
        reads.append(task_id)
        return await get(task_id)

    store.get = counting_get  # type: ignore[method-assign]
    resp = await api.post(
        "/api/v1/scripted/jobs", json={"sleep_s": 0.1}, headers={"Prefer": "wait=10"}
    )
    assert resp.status == 200, await resp.text()
    job = await resp.json()
    assert job["status"] == "completed"
    assert reads.count(job["job_id"]) == 1


async def test_waiting_holds_no_consumer_slot(make_settings: Any, start_app: Any) -> None:
    settings = make_settings(
        consumer={"max_in_flight": {"gpu": 1, "cpu": 1}, "prefetch": {"gpu": 0, "cpu": 0}}
    )
    app, api = await start_app(settings, registry())
    # One slot: a client waiting on the first job must not keep the second from running.
    waits = [
        api.post("/api/v1/scripted/jobs", json={"sleep_s": 0.2}, headers={"Prefer": "wait=20"})
        for _ in range(3)
    ]
    answers = await asyncio.gather(*waits)
    assert [r.status for r in answers] == [200, 200, 200]
    # The answer leaves as soon as the completion is written; the slot is
    # freed just after, once the message is deleted.
    await eventually(lambda: app[keys.CONSUMER].in_flight == 0, timeout=5, what="slot freed")


async def read_events(resp: Any) -> list[dict[str, Any]]:
    events = []
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("data: "):
            events.append(json.loads(line[6:]))
    return events


async def test_event_stream_reports_progress_and_ends_at_the_terminal_status(
    started: Any, tmp_path: Any
) -> None:
    from PIL import Image

    _, api = started
    image = tmp_path / "f.png"
    Image.new("RGB", (8, 8)).save(image)
    import base64

    uri = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()
    job_id = await submit(api, "scripted", {"image_url": uri, "sleep_s": 0.5})
    resp = await api.get(f"/api/v1/jobs/{job_id}/events")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/event-stream"
    events = await asyncio.wait_for(read_events(resp), 20)
    statuses = [e["status"] for e in events]
    assert statuses[-1] == "completed"
    assert statuses.count("completed") == 1
    assert any(e["stage"] == "fetched" for e in events), events  # progress came through
    assert len(events) == len({(e["status"], e["progress"], e["updated_at"]) for e in events})


async def test_event_stream_of_an_unknown_job_is_404(started: Any) -> None:
    _, api = started
    assert (await api.get("/api/v1/jobs/nope/events")).status == 404


def _counting_progress(app: Any) -> list[tuple[str, str | None]]:
    """Every progress write the store is asked for, as (job id, stage)."""
    store = app[keys.STORE]
    writes: list[tuple[str, str | None]] = []
    set_progress = store.set_progress

    async def counting(task_id: str, owner: str, percent: float, stage: str | None) -> Any:
        writes.append((task_id, stage))
        return await set_progress(task_id, owner, percent, stage)

    store.set_progress = counting
    return writes


async def test_a_short_job_writes_no_progress_its_completion_says_it_all(
    make_settings: Any, start_app: Any
) -> None:
    settings = make_settings(consumer={"progress_delay_s": 30.0}, api={"max_wait_s": 10})
    app, api = await start_app(settings, registry())
    writes = _counting_progress(app)
    resp = await api.post(
        "/api/v1/scripted/jobs", json={"image_url": IMAGE}, headers={"Prefer": "wait=10"}
    )
    job = await resp.json()
    assert job["status"] == "completed" and job["progress"] == 100
    assert writes == []  # "fetched" was reported, held back, and dropped at the end
    await asyncio.sleep(0.2)
    assert writes == []  # never written after the completion either


async def test_progress_of_a_longer_job_is_written_once_the_quiet_spell_ends(
    make_settings: Any, start_app: Any
) -> None:
    settings = make_settings(consumer={"progress_delay_s": 0.2}, api={"max_wait_s": 10})
    app, api = await start_app(settings, registry())
    writes = _counting_progress(app)
    job_id = await submit(api, "scripted", {"image_url": IMAGE, "sleep_s": 1.5})
    await eventually(lambda: bool(writes), timeout=5, what="the held progress written")
    running = await (await api.get(f"/api/v1/jobs/{job_id}")).json()
    assert (running["status"], running["stage"], running["progress"]) == (
        "processing",
        "fetched",
        10,
    )
    assert (await wait_for(api, job_id))["status"] == "completed"
    assert writes == [(job_id, "fetched")]


async def test_a_wait_on_a_job_running_here_is_woken_by_its_writes_not_by_rereads(
    make_settings: Any, start_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, api = await start_app(make_settings(api={"max_wait_s": 10}), registry())
    job_id = await submit(api, "scripted", {"sleep_s": 1.5})
    await eventually(lambda: job_id in app[keys.RUNNER].running, timeout=5, what="running here")
    watch = app[keys.WATCH]
    reads: list[str] = []
    get = watch.store.get

    async def counting_get(task_id: str) -> Any:
        reads.append(task_id)
        return await get(task_id)

    # The waits' reads only (the runner reads the record too, for cancels).
    monkeypatch.setattr(watch, "store", SimpleNamespace(get=counting_get))
    resp = await api.get(f"/api/v1/jobs/{job_id}", headers={"Prefer": "wait=10"})
    assert (await resp.json())["status"] == "completed"
    # The first look only: every later change is written by this process, and
    # the write hands the waiter the record (re-reads every 0.25-2 s would add 3).
    assert reads.count(job_id) == 1
