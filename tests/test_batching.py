"""Fewer SQS calls per job under load, and nothing lost for it.

Sends and deletes asked for together go as one ``SendMessageBatch`` or
``DeleteMessageBatch``; a consumer with
``prefetch`` receives several messages per call. A fault proxy in front of
moto counts the calls by operation.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from support import GpuProbeHandler, ScriptedHandler, eventually, submit, wait_for

from shortdrama_worker import keys
from shortdrama_worker.aws.queue import JobMessage, JobQueue, QueueError
from shortdrama_worker.plugins import HandlerRegistry


async def received(aws: Any, url: str, count: int) -> list[JobMessage]:
    """``count`` messages sent to ``url`` and received back, as the consumer sees them."""
    for n in range(count):
        await aws.sqs.send_message(QueueUrl=url, MessageBody=f'{{"n": {n}}}')
    return await received_only(aws, url, count)


async def depth(aws: Any, url: str) -> tuple[int, int]:
    attrs = (
        await aws.sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )
    )["Attributes"]
    return (
        int(attrs["ApproximateNumberOfMessages"]),
        int(attrs["ApproximateNumberOfMessagesNotVisible"]),
    )


async def in_flight_at_least(aws: Any, url: str, count: int) -> bool:
    return (await depth(aws, url))[1] >= count


async def depth_is(aws: Any, url: str, expected: tuple[int, int]) -> bool:
    return await depth(aws, url) == expected


@pytest.fixture
async def proxied(make_settings: Any, start_app: Any, moto_endpoint: str) -> Any:
    """An app (no consumer) whose AWS calls cross a counting proxy; yields (proxy, queue, aws)."""
    from fakes.faultproxy import FaultProxy

    async with FaultProxy(moto_endpoint) as proxy:
        settings = make_settings(aws={"endpoint_url": proxy.url}, consumer={"enabled": False})
        app, _ = await start_app(settings, HandlerRegistry.from_classes({}))
        yield proxy, app[keys.QUEUE], app[keys.AWS]


async def test_deletes_asked_for_together_go_as_one_batch_call(proxied: Any) -> None:
    proxy, queue, aws = proxied
    assert isinstance(queue, JobQueue)
    messages = await received(aws, queue.url("cpu"), 7)
    await asyncio.gather(*(queue.delete(m) for m in messages))
    assert proxy.seen["DeleteMessageBatch"] == 1
    assert proxy.seen["DeleteMessage"] == 0
    assert await depth(aws, queue.url("cpu")) == (0, 0)


async def test_a_delete_on_its_own_goes_out_at_once_as_a_plain_delete(proxied: Any) -> None:
    proxy, queue, aws = proxied
    [message] = await received(aws, queue.url("cpu"), 1)
    await queue.delete(message)
    assert proxy.seen["DeleteMessage"] == 1
    assert proxy.seen["DeleteMessageBatch"] == 0
    assert await depth(aws, queue.url("cpu")) == (0, 0)


async def test_more_than_ten_deletes_are_split_into_calls_of_ten(proxied: Any) -> None:
    proxy, queue, aws = proxied
    messages = await received(aws, queue.url("cpu"), 23)
    await asyncio.gather(*(queue.delete(m) for m in messages))
    assert proxy.seen["DeleteMessageBatch"] == 3  # 10 + 10 + 3
    assert await depth(aws, queue.url("cpu")) == (0, 0)


async def test_one_bad_entry_fails_only_its_own_delete(proxied: Any) -> None:
    _, queue, aws = proxied
    messages = await received(aws, queue.url("cpu"), 3)
    bogus = JobMessage("cpu", "m-x", "not-a-receipt-handle", "{}", None, 1)
    outcomes = await asyncio.gather(
        *(queue.delete(m) for m in [*messages, bogus]), return_exceptions=True
    )
    assert outcomes[:3] == [None, None, None]
    assert isinstance(outcomes[3], QueueError)
    assert "ReceiptHandleIsInvalid" in str(outcomes[3])
    assert await depth(aws, queue.url("cpu")) == (0, 0)


async def test_a_batch_call_that_fails_fails_every_delete_in_it(proxied: Any) -> None:
    from fakes.faultproxy import INTERNAL

    proxy, queue, aws = proxied
    messages = await received(aws, queue.url("cpu"), 4)
    proxy.fail("DeleteMessageBatch", 4, INTERNAL)  # the first try and botocore's 3 retries
    outcomes = await asyncio.gather(*(queue.delete(m) for m in messages), return_exceptions=True)
    assert all(isinstance(o, QueueError) for o in outcomes), outcomes
    # Nothing was deleted: the messages come back after their visibility, and
    # the conditional writes settle them (test_faults covers that path).
    assert await depth(aws, queue.url("cpu")) == (0, 4)


async def test_sends_asked_for_together_go_as_one_batch_call(proxied: Any) -> None:
    proxy, queue, aws = proxied
    await asyncio.gather(*(queue.send("cpu", f"job-{n}", "scripted") for n in range(13)))
    assert proxy.seen["SendMessageBatch"] >= 1
    assert proxy.seen["SendMessage"] + proxy.seen["SendMessageBatch"] <= 3  # 1 + 10 + 2 at most
    messages = await received_only(aws, queue.url("cpu"), 13)
    assert sorted(m.parse()[0] for m in messages) == sorted(f"job-{n}" for n in range(13))


async def test_a_send_on_its_own_goes_out_at_once_as_a_plain_send(proxied: Any) -> None:
    proxy, queue, aws = proxied
    await queue.send("cpu", "job-1", "scripted", delay_s=0)
    assert proxy.seen["SendMessage"] == 1 and proxy.seen["SendMessageBatch"] == 0
    [message] = await received_only(aws, queue.url("cpu"), 1)
    assert message.parse() == ("job-1", "scripted")


async def test_a_batch_send_that_fails_fails_every_send_in_it(proxied: Any) -> None:
    from fakes.faultproxy import INTERNAL

    proxy, queue, aws = proxied
    proxy.fail("SendMessageBatch", 4, INTERNAL)  # the first try and botocore's 3 retries
    first = asyncio.create_task(queue.send("cpu", "job-0", "scripted"))
    await asyncio.sleep(0)  # the first goes out alone; the rest wait for it and go together
    rest = [queue.send("cpu", f"job-{n}", "scripted") for n in range(1, 5)]
    outcomes = await asyncio.gather(first, *rest, return_exceptions=True)
    assert outcomes[0] is None
    assert all(isinstance(o, QueueError) for o in outcomes[1:]), outcomes
    # Only the first is queued: each caller heard of its own failure (a submit rolls back).
    assert await depth(aws, queue.url("cpu")) == (1, 0)


async def test_a_burst_of_submits_shares_send_calls_and_every_job_runs_once(
    make_settings: Any, start_app: Any, moto_endpoint: str
) -> None:
    from fakes.faultproxy import FaultProxy

    async with FaultProxy(moto_endpoint) as proxy:
        settings = make_settings(aws={"endpoint_url": proxy.url})
        app, client = await start_app(
            settings, HandlerRegistry.from_classes({"scripted": ScriptedHandler})
        )
        job_ids = await asyncio.gather(*(submit(client, "scripted", {}) for _ in range(24)))
        jobs = [await wait_for(client, job_id) for job_id in job_ids]
        assert {j["status"] for j in jobs} == {"completed"}
        assert {j["attempts"] for j in jobs} == {1}
        assert proxy.seen["SendMessageBatch"] >= 1
        assert proxy.seen["SendMessage"] + proxy.seen["SendMessageBatch"] < 24
        handler = app[keys.HANDLERS]["scripted"]
        assert isinstance(handler, ScriptedHandler)
        assert sorted(handler.finished) == sorted(job_ids)


async def received_only(aws: Any, url: str, count: int) -> list[JobMessage]:
    """``count`` messages already in ``url``, received as the consumer sees them."""
    messages: list[JobMessage] = []
    while len(messages) < count:
        reply = await aws.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)
        messages += [
            JobMessage("cpu", m["MessageId"], m["ReceiptHandle"], m["Body"], None, 1)
            for m in reply.get("Messages", [])
        ]
    return messages


async def run_burst(
    make_settings: Any, start_app: Any, moto_endpoint: str, prefetch: int
) -> tuple[int, int]:
    """16 GPU-probe jobs through 2 slots; (ReceiveMessage calls, most jobs at once)."""
    from fakes.faultproxy import FaultProxy

    async with FaultProxy(moto_endpoint) as proxy:
        settings = make_settings(
            aws={"endpoint_url": proxy.url},
            consumer={
                "consume": ["gpu"],
                "max_in_flight": {"gpu": 2, "cpu": 1},
                "prefetch": {"gpu": prefetch, "cpu": 0},
            },
            gpu={"slots": 2},
        )
        registry = HandlerRegistry.from_classes({"probe": GpuProbeHandler})
        # The burst is queued whole before any consumer starts, so the count
        # does not depend on how fast the submits go.
        api_only = settings.model_copy(
            update={"consumer": settings.consumer.model_copy(update={"enabled": False})}
        )
        _, client = await start_app(api_only, registry)
        job_ids = [
            await submit(client, "probe", {"prep_s": 0.02, "gpu_s": 0.08}) for _ in range(16)
        ]
        before = proxy.seen["ReceiveMessage"]
        app, _ = await start_app(settings, registry)
        jobs = [await wait_for(client, job_id) for job_id in job_ids]
        assert {j["status"] for j in jobs} == {"completed"}
        probe = app[keys.HANDLERS]["probe"]
        assert isinstance(probe, GpuProbeHandler)
        await client.close()
        return proxy.seen["ReceiveMessage"] - before, probe.max_concurrent_jobs


async def test_prefetch_receives_a_burst_several_at_a_time_within_the_slots(
    make_settings: Any, start_app: Any, moto_endpoint: str
) -> None:
    receives_alone, most_alone = await run_burst(make_settings, start_app, moto_endpoint, 0)
    receives_ahead, most_ahead = await run_burst(make_settings, start_app, moto_endpoint, 6)
    assert most_alone <= 2 and most_ahead <= 2, "prefetched messages wait for a slot"
    print(f"receives: {receives_alone} alone, {receives_ahead} with prefetch")
    assert receives_ahead < receives_alone
    assert receives_ahead <= 8, f"{receives_ahead} receives for 16 jobs"


async def scripted_instance(
    make_settings: Any, start_app: Any, slots: int, prefetch: int, **sections: Any
) -> Any:
    """An instance running the scripted handler with ``slots`` CPU slots and ``prefetch``."""
    settings = make_settings(
        consumer={
            "max_in_flight": {"cpu": slots, "gpu": 1},
            "prefetch": {"cpu": prefetch, "gpu": 0},
        },
        **sections,
    )
    return await start_app(settings, HandlerRegistry.from_classes({"scripted": ScriptedHandler}))


async def test_messages_waiting_for_a_slot_are_handed_back_at_shutdown(
    make_settings: Any, start_app: Any, aws: Any
) -> None:
    first, client = await scripted_instance(make_settings, start_app, slots=1, prefetch=4)
    # The running job outlasts the 2-s grace period however slowly the rest
    # of the test goes; the four behind it are short.
    running = await submit(client, "scripted", {"sleep_s": 6})
    await wait_for(client, running, ("processing",))
    job_ids = [running] + [await submit(client, "scripted", {"sleep_s": 0.1}) for _ in range(4)]
    url = first[keys.QUEUE].url("cpu")
    # One running, at least two received and waiting for the only slot.
    await eventually(lambda: in_flight_at_least(aws, url, 3), what="prefetch")
    consumer = first[keys.CONSUMER]
    assert consumer is not None
    stopping = asyncio.create_task(consumer.stop())
    # Those that never started are back in the queue at once, well inside the
    # grace period, not after their visibility timeout; the running one
    # follows when the grace period ends.
    await eventually(lambda: depth_is(aws, url, (4, 1)), timeout=1.5, what="hand-back")
    await stopping
    for job_id in job_ids:
        job = await (await client.get(f"/api/v1/jobs/{job_id}")).json()
        assert job["status"] == "pending"
        assert job["attempts"] == 0
    first_handler = first[keys.HANDLERS]["scripted"]
    assert isinstance(first_handler, ScriptedHandler)
    assert len(first_handler.runs) == 1, "only one job ever started on the stopped instance"

    # Same queues, table and bucket (names are per test), default slots.
    second, _ = await start_app(
        make_settings(), HandlerRegistry.from_classes({"scripted": ScriptedHandler})
    )
    jobs = [await wait_for(client, job_id, timeout=30) for job_id in job_ids]
    assert {j["status"] for j in jobs} == {"completed"}
    second_handler = second[keys.HANDLERS]["scripted"]
    assert isinstance(second_handler, ScriptedHandler)
    assert sorted(second_handler.finished) == sorted(job_ids)


def handler_runs(app: Any) -> list[tuple[str, int]]:
    handler = app[keys.HANDLERS]["scripted"]
    assert isinstance(handler, ScriptedHandler)
    return list(handler.runs)


async def test_a_message_waiting_for_a_slot_stays_hidden_past_its_visibility_timeout(
    make_settings: Any, start_app: Any, aws: Any
) -> None:
    app, client = await scripted_instance(
        make_settings, start_app, slots=1, prefetch=1, queues={"visibility_timeout_s": 5}
    )
    # The first job holds the only slot well past the window watched below,
    # so a slow machine cannot end it while the second message is observed.
    first = await submit(client, "scripted", {"sleep_s": 14})
    await wait_for(client, first, ("processing",))
    second = await submit(client, "scripted", {})
    url = app[keys.QUEUE].url("cpu")
    # The second message is received at once and waits for the only slot,
    # longer than its 5-s visibility timeout: it must not reappear meanwhile.
    # The window is measured by the clock, not by a count of samples, so
    # slow GetQueueAttributes calls cannot stretch it past the first job.
    loop = asyncio.get_running_loop()
    watch_until = loop.time() + 5 + 2.5
    await asyncio.sleep(1.0)
    seen = [await depth(aws, url)]
    while loop.time() < watch_until:
        await asyncio.sleep(0.25)
        seen.append(await depth(aws, url))
    assert len(seen) >= 10, seen
    # (visible, in flight): both messages stay in flight, none reappears.
    unexpected = [state for state in seen if state != (0, 2)]
    assert not unexpected, f"{unexpected} among {seen}"
    assert handler_runs(app) == [(first, 1)], "the second job waited for the slot"
    assert (await wait_for(client, first, timeout=30))["status"] == "completed"
    assert (await wait_for(client, second))["status"] == "completed"
    assert handler_runs(app) == [(first, 1), (second, 1)]


async def test_a_queue_given_no_slots_takes_no_messages_ahead_either(
    make_settings: Any, start_app: Any, aws: Any
) -> None:
    app, client = await scripted_instance(make_settings, start_app, slots=0, prefetch=4)
    job_id = await submit(client, "scripted", {})
    url = app[keys.QUEUE].url("cpu")
    # Several long-poll rounds: the message stays visible to other instances.
    for _ in range(8):
        await asyncio.sleep(0.25)
        assert await depth(aws, url) == (1, 0)
    assert (await (await client.get(f"/api/v1/jobs/{job_id}")).json())["status"] == "pending"
    assert handler_runs(app) == []
