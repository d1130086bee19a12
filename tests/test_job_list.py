"""Listing jobs: filters, newest first, the cursor, and each key seeing its own jobs."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from support import ScriptedHandler, submit, wait_for

from shortdrama_worker.plugins import HandlerRegistry
from shortdrama_worker.web.auth import new_key


class OtherHandler(ScriptedHandler):
    """A second kind, to filter by."""


def registry() -> HandlerRegistry:
    return HandlerRegistry.from_classes({"scripted": ScriptedHandler, "other": OtherHandler})


@pytest.fixture
async def api(make_settings: Any, start_app: Any) -> Any:
    _, client = await start_app(make_settings(), registry())
    return client


async def all_pages(api: Any, query: str, limit: int) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    cursor = None
    while True:
        url = f"/api/v1/jobs?{query}&limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        resp = await api.get(url)
        assert resp.status == 200, await resp.text()
        page = await resp.json()
        assert len(page["jobs"]) <= limit
        jobs += page["jobs"]
        cursor = page["next_cursor"]
        if cursor is None:
            return jobs


async def test_pages_through_every_status_newest_first_without_gaps_or_repeats(api: Any) -> None:
    done = [await submit(api, "scripted", {}) for _ in range(4)]
    for job_id in done:
        await wait_for(api, job_id)
    failed = await submit(api, "other", {"permanent": "bad frame"})
    await wait_for(api, failed)
    cancelled = await submit(api, "scripted", {"sleep_s": 5})
    assert (await api.delete(f"/api/v1/jobs/{cancelled}")).status == 202
    await wait_for(api, cancelled)
    submitted = [*done, failed, cancelled]

    for limit in (1, 2, 4, 50):
        listed = await all_pages(api, "", limit)
        ids = [job["job_id"] for job in listed]
        assert ids == list(reversed(submitted)), f"limit {limit}"
        created = [job["created_at"] for job in listed]
        assert created == sorted(created, reverse=True)

    completed = await all_pages(api, "status=completed", 3)
    assert [j["job_id"] for j in completed] == list(reversed(done))
    assert all(j["status"] == "completed" and j["result_url"] for j in completed)
    assert [j["job_id"] for j in await all_pages(api, "kind=other", 2)] == [failed]
    both = await all_pages(api, "status=failed,cancelled", 1)
    assert [j["job_id"] for j in both] == [cancelled, failed]


async def test_time_range_filters_by_creation(api: Any) -> None:
    first = await submit(api, "scripted", {})
    middle = time.time()
    second = await submit(api, "scripted", {})
    for job_id in (first, second):
        await wait_for(api, job_id)
    later = await all_pages(api, f"since={middle}", 10)
    assert [j["job_id"] for j in later] == [second]
    earlier = await all_pages(api, f"until={middle}", 10)
    assert [j["job_id"] for j in earlier] == [first]
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(middle + 3600)) + "Z"
    assert len(await all_pages(api, f"until={iso}", 10)) == 2


async def test_listed_jobs_carry_their_files_inputs_and_timings(api: Any) -> None:
    job_id = await submit(api, "scripted", {})
    await wait_for(api, job_id)
    listed = (await (await api.get("/api/v1/jobs")).json())["jobs"][0]
    assert listed["job_id"] == job_id
    (file,) = listed["files"]
    assert file["name"] == "out.txt" and file["content_type"] == "text/plain"
    async with api.session.get(file["url"]) as resp:
        assert await resp.read() == b"done"
    assert listed["timings"]["run_s"] is not None and listed["timings"]["total_s"] >= 0
    # The input as validated: defaults filled in, nulls kept (a required field
    # may be nullable, and must still be there when the job runs).
    assert listed["input"] == {
        "fail_times": 0,
        "sleep_s": 0.0,
        "permanent": None,
        "image_url": None,
    }


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("status=finished", "status"),
        ("limit=0", "limit"),
        ("limit=x", "limit"),
        ("since=yesterday", "since"),
        ("since=20&until=10", "since"),
        ("cursor=not-a-cursor", "cursor"),
    ],
)
async def test_bad_queries_are_refused_naming_the_parameter(
    api: Any, query: str, problem: str
) -> None:
    resp = await api.get(f"/api/v1/jobs?{query}")
    assert resp.status == 400
    assert (await resp.json())["error"]["message"].startswith(problem)


async def test_a_tampered_or_foreign_cursor_is_refused(api: Any) -> None:
    for _ in range(3):
        await submit(api, "scripted", {})
    page = await (await api.get("/api/v1/jobs?limit=1")).json()
    cursor = page["next_cursor"]
    blob = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    # Another status's key under this status, and a key of another shape.
    status = next(iter(blob["p"]))
    other = next(s for s in ("pending", "completed") if s != status)
    forged = {
        **blob,
        "p": {status: {"task_id": {"S": "x"}, "status": {"S": other}, "created_at": {"N": "1"}}},
    }
    for bad in (forged, {**blob, "p": {status: {"task_id": {"S": "x"}}}}):
        token = base64.urlsafe_b64encode(json.dumps(bad).encode()).decode()
        resp = await api.get(f"/api/v1/jobs?limit=1&cursor={token}")
        assert resp.status == 400, await resp.text()
    # A cursor is bound to the filters it was made for.
    resp = await api.get(f"/api/v1/jobs?limit=1&kind=other&cursor={cursor}")
    assert resp.status == 400
    assert "other filters" in (await resp.json())["error"]["message"]


async def test_each_key_lists_its_own_jobs_unless_it_may_read_all(
    make_settings: Any, start_app: Any
) -> None:
    keys_ = {name: new_key() for name in ("alice", "bob", "ops")}
    entries = [
        {"id": name, "sha256": digest, "read_all": name == "ops"}
        for name, (_, digest) in keys_.items()
    ]
    settings = make_settings(auth={"enabled": True, "keys": entries})
    _, api = await start_app(settings, registry())

    def auth(name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {keys_[name][0]}"}

    mine = await submit(api, "scripted", {}, headers=auth("alice"))
    theirs = await submit(api, "scripted", {}, headers=auth("bob"))
    lists = {}
    for name in keys_:
        resp = await api.get("/api/v1/jobs", headers=auth(name))
        lists[name] = {j["job_id"] for j in (await resp.json())["jobs"]}
    assert lists == {"alice": {mine}, "bob": {theirs}, "ops": {mine, theirs}}
    assert (await api.get("/api/v1/jobs")).status == 401


async def test_an_unknown_or_misspelt_filter_is_a_400_naming_it(api: Any) -> None:
    resp = await api.get("/api/v1/jobs?stauts=failed")
    assert resp.status == 400
    assert "'stauts'" in (await resp.json())["error"]["message"]
