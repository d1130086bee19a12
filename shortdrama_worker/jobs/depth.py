"""Queue and DLQ depth from SQS attributes, exported for dashboards and alerts."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from shortdrama_worker.aws.queue import JobQueue, QueueError
from shortdrama_worker.metrics import Metrics
from shortdrama_worker.settings import Resource, Settings

POLL_S = 15.0


class QueueDepthExporter:
    """Polls the depth of each queue of an installed kind and its DLQ; ``depths`` keeps the last.

    Queues this instance accepts jobs for but does not consume are polled too,
    and ``shortdrama_queue_consumed`` says which are which: a backlog on a queue
    that no instance consumes is then visible to an alert, since the instances
    that consume a queue cannot report one that nobody consumes.
    """

    def __init__(
        self,
        settings: Settings,
        queue: JobQueue,
        metrics: Metrics,
        resources: Iterable[Resource],
        consumed: Iterable[Resource],
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.metrics = metrics
        self.resources = list(resources)
        self.consumed = [r for r in self.resources if r in set(consumed)]
        self.depths: dict[str, int] = {}
        # Fixed for the life of the process: set once, before the first poll.
        for resource in self.resources:
            consumed_here = 1 if resource in self.consumed else 0
            metrics.queue_consumed.labels(settings.queue_name(resource)).set(consumed_here)

    async def poll_once(self) -> None:
        for resource in self.resources:
            for dlq in (False, True):
                name = (
                    self.settings.dlq_name(resource) if dlq else self.settings.queue_name(resource)
                )
                try:
                    visible, invisible = await self.queue.depth(resource, dlq=dlq)
                except QueueError:
                    self.metrics.sqs_errors.labels("attributes").inc()
                    continue
                self.metrics.queue_depth.labels(name).set(visible)
                self.depths[name] = visible
                self.metrics.queue_in_flight.labels(name).set(invisible)

    async def run(self) -> None:
        while True:
            await self.poll_once()
            await asyncio.sleep(POLL_S)
