"""Re-queue jobs whose message was lost: a background component of its own."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import structlog

from shortdrama_worker.aws.queue import JobQueue, QueueError
from shortdrama_worker.aws.store import StaleTransition, StoreError, TaskStore
from shortdrama_worker.settings import Resource, Settings

log = structlog.get_logger("shortdrama_worker.jobs.reconcile")


class Reconciler:
    """Finds records with no message and sends one again.

    A message can be lost where a write succeeded but its answer did not
    arrive (PutItem timing out after it landed), or where SQS's redrive moved
    it to the DLQ while its job was still pending. A duplicate message is
    harmless (claims are conditional), so erring towards re-sending is safe.
    """

    def __init__(
        self,
        settings: Settings,
        store: TaskStore,
        queue: JobQueue,
        resources: Mapping[str, Resource],
    ) -> None:
        self.settings = settings
        self.store = store
        self.queue = queue
        # Only kinds served here: another instance serves (and re-queues) the rest.
        self.resources = dict(resources)

    async def reconcile_once(self) -> int:
        """Re-queue the orphans of the kinds served here; returns how many."""
        before = time.time() - self.settings.consumer.stale_after_s
        kinds = sorted(self.resources)
        requeued = 0
        for status in ("pending", "processing"):
            for task in await self.store.orphans(status, before, kinds):
                try:
                    await self.store.claim_orphan(task.task_id, before)
                except StaleTransition:
                    continue  # not an orphan after all, or another instance won
                resource = self.resources[task.job_type]
                await self.queue.send(resource, task.task_id, task.job_type)
                log.warning("orphan_requeued", job_id=task.task_id, status=status)
                requeued += 1
        return requeued

    async def run(self) -> None:
        """Reconcile every ``consumer.reconcile_interval_s`` until cancelled."""
        while True:
            await asyncio.sleep(self.settings.consumer.reconcile_interval_s)
            try:
                await self.reconcile_once()
            except (StoreError, QueueError) as exc:
                log.warning("reconcile_failed", error=str(exc))
            except Exception:
                # A background loop must not die on one bad record: the
                # watchdog would take the whole process down with it.
                log.exception("reconcile_crashed")
