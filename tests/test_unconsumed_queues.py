"""A queue this instance accepts jobs for but does not consume: a note on /health, and
the gauges (``shortdrama_queue_consumed``, the queue's depth) the alert
``ShortdramaQueueNotConsumed`` reads to see a backlog that nobody will take."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from support import ScriptedHandler, submit

from shortdrama_worker import keys
from shortdrama_worker.plugins import HandlerRegistry


class GpuScriptedHandler(ScriptedHandler):
    resource = "gpu"


def registry() -> HandlerRegistry:
    return HandlerRegistry.from_classes(
        {"scripted": ScriptedHandler, "gpu_scripted": GpuScriptedHandler}
    )


async def samples(client: Any, name: str) -> dict[str, float]:
    """``queue`` label -> value of one metric, as /metrics shows it."""
    text = await (await client.get("/metrics")).text()
    return {
        sample.labels["queue"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


async def test_api_only_instance_stays_healthy_and_notes_every_queue(
    make_settings: Any, start_app: Any
) -> None:
    settings = make_settings(consumer={"enabled": False})
    _, client = await start_app(settings, registry())
    resp = await client.get("/health")
    assert resp.status == 200
    health = await resp.json()
    # Deliberately split from its workers: informational, not degraded.
    assert health["status"] == "healthy"
    assert not any(name.startswith("queue:") for name in health["checks"])
    assert health["notes"] == {
        "queue:cpu": "not consumed here: jobs of scripted wait in "
        f"{settings.queue_name('cpu')} for an instance whose consumer.consume includes 'cpu'",
        "queue:gpu": "not consumed here: jobs of gpu_scripted wait in "
        f"{settings.queue_name('gpu')} for an instance whose consumer.consume includes 'gpu'",
    }
    assert await samples(client, "shortdrama_queue_consumed") == {
        settings.queue_name("cpu"): 0.0,
        settings.queue_name("gpu"): 0.0,
    }


async def test_backlog_on_a_queue_not_consumed_here_shows_in_its_depth(
    make_settings: Any, start_app: Any
) -> None:
    settings = make_settings(consumer={"consume": ["cpu"]})
    app, client = await start_app(settings, registry())
    gpu_queue = settings.queue_name("gpu")

    health = await (await client.get("/health")).json()
    assert health["status"] == "healthy"
    assert list(health["notes"]) == ["queue:gpu"]
    assert "gpu_scripted" in health["notes"]["queue:gpu"]
    assert await samples(client, "shortdrama_queue_consumed") == {
        settings.queue_name("cpu"): 1.0,
        gpu_queue: 0.0,
    }

    # Accepted (only the embedded endpoint refuses it), then it waits.
    await submit(client, "gpu-scripted", {})
    await app[keys.DEPTH].poll_once()
    depths = await samples(client, "shortdrama_queue_messages")
    assert depths[gpu_queue] == 1.0
    assert depths[settings.dlq_name("gpu")] == 0.0


async def test_instance_consuming_all_it_serves_has_no_notes(
    make_settings: Any, start_app: Any
) -> None:
    settings = make_settings()
    _, client = await start_app(
        settings, HandlerRegistry.from_classes({"scripted": ScriptedHandler})
    )
    health = await (await client.get("/health")).json()
    assert health["status"] == "healthy"
    assert "notes" not in health
    # No kind here runs on the GPU queue: not this instance's business.
    assert await samples(client, "shortdrama_queue_consumed") == {settings.queue_name("cpu"): 1.0}
