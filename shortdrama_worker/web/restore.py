"""After the embedded endpoint's state is restored: queue every unfinished job again."""

from __future__ import annotations

from typing import Any

from shortdrama_worker.aws.queue import JobQueue
from shortdrama_worker.aws.store import TaskStore


async def requeue_unfinished(store: TaskStore, queue: JobQueue) -> int:
    """Send a message for each pending or running job; the table is the source of truth.

    Queues are not kept across restarts. A job that was running when the
    daemon died still has a live lease for a while: its claim is refused and
    its message deferred until the lease runs out, then it runs again.
    """
    sent = 0
    for status in ("pending", "processing"):
        start: dict[str, Any] | None = None
        while True:
            tasks, start = await store.page_by_status(
                status,
                since=None,
                until=None,
                kind=None,
                submitted_by=None,
                limit=100,
                start_key=start,
            )
            for task in tasks:
                resource: Any = task.resource
                await queue.send(resource, task.task_id, task.job_type)
                sent += 1
            if start is None:
                break
    return sent
