"""What a job's end means for its key and for later requests: the ledger.

Called once by ``settle.Settler`` for the write that made a job terminal. It
frees the key's concurrency slot, adds a completed job's estimated cost to the
key's spend for today, counts cost and reuse on the metrics (by kind, never
by key), and remembers the result for requests that repeat it. Each step is
best effort: the job's outcome is written already and stands whatever fails
here (a lost slot release is repaired by ``limits``, a lost pointer only
means one more run).
"""

from __future__ import annotations

import structlog

from shortdrama_worker.aws.store import Task
from shortdrama_worker.jobs.limits import Limits
from shortdrama_worker.jobs.reuse import Reuser
from shortdrama_worker.metrics import Metrics

log = structlog.get_logger("shortdrama_worker.jobs.ledger")


class Ledger:
    """Bookkeeping for settled jobs (one per application)."""

    def __init__(self, *, limits: Limits, reuser: Reuser, metrics: Metrics) -> None:
        self.limits = limits
        self.reuser = reuser
        self.metrics = metrics

    async def settled(self, task: Task) -> None:
        """``task`` has just reached a terminal status; never raises."""
        try:
            await self._settled(task)
        except Exception:
            log.exception("ledger_failed", job_id=task.task_id)

    async def _settled(self, task: Task) -> None:
        principal = Limits.principal(task.submitted_by)
        limits = self.limits.limits_for(task.submitted_by)
        if limits.concurrency is not None:
            await self.limits.release_slot(principal, task.task_id)
        if task.status != "completed":
            return
        cost = task.cost or {}
        total = float(cost.get("total", 0.0))
        if total > 0:
            self.metrics.job_cost.labels(task.job_type).inc(total)
            await self.limits.add_spend(principal, total)
        if task.reused_from:
            self.metrics.jobs_reused.labels(task.job_type).inc()
            self.metrics.cost_saved.labels(task.job_type).inc(float(cost.get("saved", 0.0)))
        else:
            await self.reuser.remember(task)
