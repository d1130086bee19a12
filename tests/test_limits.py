"""Per-key limits as clients meet them: bursts against two instances sharing one store.

Every refusal is a 429 with Retry-After and a body naming the limit; every
accepted job runs to the end; nothing beyond the limit gets in.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from support import ScriptedHandler, eventually, submit, wait_for

from shortdrama_worker import keys
from shortdrama_worker.aws.store import TaskStore
from shortdrama_worker.edge_settings import LimitsSettings
from shortdrama_worker.plugins import HandlerRegistry
from shortdrama_worker.web.auth import digest

EDITOR, PARTNER = "sdw_editor_key", "sdw_partner_key"


def registry() -> HandlerRegistry:
    return HandlerRegistry.from_classes({"scripted": ScriptedHandler})


def scripted(app: Any) -> ScriptedHandler:
    handler = app[keys.HANDLERS]["scripted"]
    assert isinstance(handler, ScriptedHandler)
    return handler


async def two_instances(make_settings: Any, start_app: Any, **sections: Any) -> tuple[Any, ...]:
    settings = make_settings(**sections)
    first, a = await start_app(settings, registry())
    second, b = await start_app(settings, registry())
    return first, second, a, b


async def burst(clients: list[Any], count: int, payload: dict[str, Any], **kw: Any) -> list[Any]:
    """``count`` submits at once, spread over ``clients``; (status, headers, body) each."""

    async def one(client: Any) -> Any:
        resp = await client.post("/api/v1/scripted/jobs", json=payload, **kw)
        return resp.status, resp.headers, await resp.json()

    return await asyncio.gather(*(one(clients[i % len(clients)]) for i in range(count)))


def check_refusals(answers: list[Any], limit: str) -> list[str]:
    """Every answer is 202 or a well-formed 429 for ``limit``; the accepted job ids."""
    accepted = []
    for status, headers, body in answers:
        if status == 202:
            accepted.append(body["job_id"])
            continue
        assert status == 429, body
        assert int(headers["Retry-After"]) >= 1
        assert body["error"]["code"] == "limit_exceeded"
        assert body["error"]["limit"] == limit
        assert body["error"]["retry_after_s"] == int(headers["Retry-After"])
    return accepted


async def all_completed(client: Any, job_ids: list[str]) -> None:
    for job_id in job_ids:
        assert (await wait_for(client, job_id, timeout=30))["status"] == "completed"


async def test_a_rate_limit_holds_across_two_instances(make_settings: Any, start_app: Any) -> None:
    # A day-long window: the burst cannot straddle two windows.
    limits = {"default": {"rate": 5, "rate_window_s": 86400}}
    first, second, a, b = await two_instances(make_settings, start_app, limits=limits)
    answers = await burst([a, b], 14, {})
    accepted = check_refusals(answers, "rate")
    assert len(accepted) == 5
    await all_completed(a, accepted)
    assert sorted(scripted(first).finished + scripted(second).finished) == sorted(accepted)
    refused = sum(
        app[keys.METRICS].submits_refused.labels("rate")._value.get() for app in (first, second)
    )
    assert refused == 9


async def test_a_concurrency_limit_holds_across_two_instances_and_frees_on_finish(
    make_settings: Any, start_app: Any
) -> None:
    limits = {"default": {"concurrency": 3}}
    _first, _second, a, b = await two_instances(make_settings, start_app, limits=limits)
    answers = await burst([a, b], 12, {"sleep_s": 1.0})
    accepted = check_refusals(answers, "concurrency")
    assert len(accepted) == 3
    await all_completed(a, accepted)
    # Finished jobs give their slots back: three more get in.
    accepted = check_refusals(await burst([b, a], 5, {"sleep_s": 0.2}), "concurrency")
    assert len(accepted) == 3
    await all_completed(b, accepted)


async def test_a_daily_job_quota_runs_out_mid_burst(make_settings: Any, start_app: Any) -> None:
    limits = {"default": {"jobs_per_day": 4}}
    _, _, a, b = await two_instances(make_settings, start_app, limits=limits)
    answers = await burst([a, b], 10, {})
    accepted = check_refusals(answers, "jobs_per_day")
    assert len(accepted) == 4
    refusal = next(ans for ans in answers if ans[0] == 429)
    assert int(refusal[1]["Retry-After"]) <= 86400  # tomorrow (UTC)
    await all_completed(a, accepted)
    again = await a.post("/api/v1/scripted/jobs", json={})
    assert again.status == 429  # the same answer once spent


async def test_limits_are_per_key_with_defaults_and_overrides(
    make_settings: Any, start_app: Any
) -> None:
    settings = make_settings(
        auth={
            "enabled": True,
            "keys": [
                {"id": "editor", "sha256": digest(EDITOR)},
                {"id": "partner", "sha256": digest(PARTNER)},
            ],
        },
        limits={"default": {"jobs_per_day": 2}, "keys": {"partner": {"jobs_per_day": 5}}},
    )
    _, client = await start_app(settings, registry())
    editor = {"headers": {"Authorization": f"Bearer {EDITOR}"}}
    partner = {"headers": {"Authorization": f"Bearer {PARTNER}"}}
    assert len(check_refusals(await burst([client], 4, {}, **editor), "jobs_per_day")) == 2
    assert len(check_refusals(await burst([client], 7, {}, **partner), "jobs_per_day")) == 5


async def test_a_replayed_submit_is_answered_not_refused_and_keeps_its_slot(
    make_settings: Any, start_app: Any
) -> None:
    settings = make_settings(limits={"default": {"concurrency": 1}})
    _, client = await start_app(settings, registry())
    headers = {"Idempotency-Key": "frame-17"}
    job_id = await submit(client, "scripted", {"sleep_s": 2}, headers=headers)
    replay = await client.post("/api/v1/scripted/jobs", json={"sleep_s": 2}, headers=headers)
    assert replay.status == 202, await replay.text()
    assert (await replay.json())["job_id"] == job_id
    # The replay did not free the slot the job still holds.
    other = await client.post("/api/v1/scripted/jobs", json={})
    assert other.status == 429
    await wait_for(client, job_id)
    await eventually(
        lambda: _accepted(client), what="a new job accepted once the first finished", timeout=10
    )


async def _accepted(client: Any) -> bool:
    return (await client.post("/api/v1/scripted/jobs", json={})).status == 202


async def test_a_failed_submit_gives_its_quota_back(make_settings: Any, start_app: Any) -> None:
    settings = make_settings(limits={"default": {"jobs_per_day": 1, "concurrency": 1}})
    _, client = await start_app(settings, registry())
    bad = await client.post("/api/v1/scripted/jobs", json={"image_url": "data:image/png;base64,@@"})
    assert bad.status == 422
    job_id = await submit(client, "scripted", {})
    assert (await wait_for(client, job_id))["status"] == "completed"


async def test_a_slot_whose_release_was_lost_is_repaired(
    make_settings: Any, start_app: Any, aws: Any
) -> None:
    """A worker that died after finishing a job but before freeing its slot leaks
    nothing for good: the next refusal looks at the jobs it counts."""
    settings = make_settings(limits={"default": {"concurrency": 2}})
    _app, client = await start_app(settings, registry())
    done = await submit(client, "scripted", {})
    await wait_for(client, done)
    table = settings.store.table
    live = {"task_id": {"S": "#limits/(anonymous)/live"}}
    # The slot of the finished job, as a crash would have left it, and one of a
    # job whose record never came to be (its submit died mid-way, long ago).
    await aws.dynamodb.update_item(
        TableName=table,
        Key=live,
        UpdateExpression="SET jobs.#done = :t, jobs.#ghost = :old",
        ExpressionAttributeNames={"#done": done, "#ghost": "ghost-job"},
        ExpressionAttributeValues={":t": {"N": str(time.time())}, ":old": {"N": "1000"}},
    )
    answers = await burst([client], 3, {"sleep_s": 0.5})
    accepted = check_refusals(answers, "concurrency")
    assert len(accepted) == 2
    await all_completed(client, accepted)

    async def slots_held() -> dict[str, Any]:
        item = await aws.dynamodb.get_item(TableName=table, Key=live, ConsistentRead=True)
        held: dict[str, Any] = item["Item"]["jobs"]["M"]
        return held

    # A slot is freed just after its job's record says completed.
    await eventually(lambda: slots_held_empty(slots_held), timeout=10, what="every slot freed")
    assert await slots_held() == {}


async def slots_held_empty(read: Any) -> bool:
    return await read() == {}


async def test_counter_items_are_not_jobs(make_settings: Any, start_app: Any) -> None:
    settings = make_settings(limits={"default": {"concurrency": 2, "rate": 100}})
    app, client = await start_app(settings, registry())
    await wait_for(client, await submit(client, "scripted", {}))
    store: TaskStore = app[keys.STORE]
    assert await store.get("#limits/(anonymous)/live") is None
    resp = await client.get("/api/v1/jobs/%23limits%2F(anonymous)%2Flive")
    assert resp.status == 404
    listing = await (await client.get("/api/v1/jobs")).json()
    assert all(not job["job_id"].startswith("#") for job in listing["jobs"])


def test_a_key_inherits_the_default_for_what_it_leaves_unset() -> None:
    limits = LimitsSettings.model_validate(
        {"default": {"rate": 10, "concurrency": 2}, "keys": {"partner": {"concurrency": 8}}}
    )
    partner = limits.for_principal("partner")
    assert (partner.rate, partner.concurrency) == (10, 8)
    assert limits.for_principal("someone").concurrency == 2
    assert limits.for_principal(None).rate == 10
