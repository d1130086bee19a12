"""The one place a ``Decision`` is applied: record write, message, webhook, metrics, log.

Order matters for exactly-once: the record is written first, the message
deleted (or hidden, or dead-lettered) after, so a crash between the two
leaves a message that finds the job settled and is deleted then. A write that
finds the record moved on (``StaleTransition``) means another worker or a
cancel got there first; the attempt's outcome is then discarded, never
counted twice. Every counted outcome logs exactly one ``job_finished``.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, replace
from typing import Any

import structlog

from shortdrama_worker.aws.queue import JobMessage, JobQueue, QueueError
from shortdrama_worker.aws.store import StaleTransition, StoreError, Task, TaskStore
from shortdrama_worker.jobs.ledger import Ledger
from shortdrama_worker.jobs.outcomes import Decision, Disposition, Outcome, Write
from shortdrama_worker.jobs.webhooks import WebhookSender
from shortdrama_worker.metrics import Metrics

log = structlog.get_logger("shortdrama_worker.jobs.settle")


@dataclass(frozen=True)
class Completion:
    """What a successful run wrote: the result as stored and its primary file."""

    result: dict[str, Any]
    result_key: str | None
    cost: dict[str, Any] | None = None
    reuse_key: str | None = None
    reused_from: str | None = None


class Settler:
    """Applies decisions for one process (``owner`` is its lease owner id)."""

    def __init__(
        self,
        *,
        owner: str,
        store: TaskStore,
        queue: JobQueue,
        webhooks: WebhookSender,
        metrics: Metrics,
        ledger: Ledger | None = None,
    ) -> None:
        self.owner = owner
        self.store = store
        self.queue = queue
        self.webhooks = webhooks
        self.metrics = metrics
        self.ledger = ledger

    async def apply(
        self,
        decision: Decision,
        message: JobMessage,
        task: Task | None,
        *,
        duration_s: float = 0.0,
        completion: Completion | None = None,
    ) -> Outcome | None:
        """Carry out ``decision``; return the outcome counted, if any.

        ``task`` is the record the decision was made on; ``None`` only for a
        message whose record does not exist (nothing to write then).
        """
        if decision.log_event:
            extra = {"status": task.status, "owner": task.owner} if task else {}
            log.info(decision.log_event, **extra)
        if task is not None:
            decision = await self._write(decision, task, completion)
        await self._dispose(decision, message)
        if decision.outcome is not None and task is not None:
            self._count(task.job_type, decision, duration_s, task.attempts)
        return decision.outcome

    async def _write(
        self, decision: Decision, task: Task, completion: Completion | None
    ) -> Decision:
        """Write the record; the decision that actually holds after it."""
        try:
            written = await self._store_write(decision, task, completion)
        except StaleTransition as stale:
            held = self._stale(decision, task, stale.task, completion)
            if held is decision and stale.task is not None:
                # Our completion had landed; its bookkeeping is still ours to do.
                await self._settled(stale.task)
            return held
        except (StoreError, QueueError) as exc:
            if decision.write is not Write.RELEASE:
                raise
            # A hand-back that cannot be written still ends this attempt:
            # the lease runs out and another instance takes the job then.
            log.warning("release_failed", error=str(exc))
            return replace(decision, message=Disposition.LEAVE)
        if written is None:
            return decision
        if written.terminal:
            self.webhooks.schedule(written)
            await self._settled(written)
        elif written.cancel_requested and decision.write in (Write.RETRY_LATER, Write.RELEASE):
            # Cancelled while this run was failing or being handed back: no retry.
            return await self._write(_SETTLE_CANCEL, written, None)
        elif decision.write is Write.RETRY_LATER:
            self.metrics.retries.labels(task.job_type).inc()
            log.info("job_retry_scheduled", delay_s=round(decision.delay_s, 1), error=decision.text)
        return decision

    async def _store_write(
        self, decision: Decision, task: Task, completion: Completion | None
    ) -> Task | None:
        store, tid, owner = self.store, task.task_id, self.owner
        code, text = decision.code or "error", decision.text or ""
        match decision.write:
            case Write.NONE:
                return None
            case Write.COMPLETE:
                assert completion is not None
                return await store.complete(
                    tid,
                    owner,
                    result=completion.result,
                    result_url=None,
                    result_key=completion.result_key,
                    cost=completion.cost,
                    reuse_key=completion.reuse_key,
                    reused_from=completion.reused_from,
                )
            case Write.FAIL:
                return await store.fail(tid, owner, code=code, message=text)
            case Write.RETRY_LATER:
                return await store.retry_later(tid, owner, code=code, message=text)
            case Write.CANCELLED:
                return await store.cancelled(tid, owner)
            case Write.RELEASE:
                return await store.release(tid, owner)
            case Write.SETTLE_CANCEL:
                return await store.settle_cancel(tid)
            case Write.FAIL_ABANDONED:
                return await store.fail_abandoned(tid, code=code, message=text)

    async def _settled(self, task: Task) -> None:
        if self.ledger is not None:
            await self.ledger.settled(task)

    def _stale(
        self,
        decision: Decision,
        task: Task,
        current: Task | None,
        completion: Completion | None,
    ) -> Decision:
        """The record had moved on when we wrote it."""
        if (
            decision.write is Write.COMPLETE
            and current is not None
            and completion is not None
            and _is_our_completion(current, completion)
        ):
            # Our write landed but its answer was lost; the retry saw it done.
            self.webhooks.schedule(current)
            return decision
        if decision.write is Write.SETTLE_CANCEL:
            # It moved on (claimed, finished): look at the message again shortly.
            return Decision(Write.NONE, Disposition.HIDE, None, delay_s=5)
        if decision.write is Write.COMPLETE:
            # We lost the lease (a stall outlived it) and another worker owns
            # the job now: its outcome counts, ours is discarded.
            log.warning("result_discarded_lost_lease", now_owner=current.owner if current else None)
        else:
            log.info("attempt_outcome_discarded", write=decision.write.name, status=task.status)
        return Decision(Write.NONE, Disposition.LEAVE, None)

    async def _dispose(self, decision: Decision, message: JobMessage) -> None:
        match decision.message:
            case Disposition.DELETE:
                await self._delete_quietly(message)
            case Disposition.HIDE:
                await self.queue.set_visibility(message, decision.delay_s)
            case Disposition.HAND_BACK:
                try:
                    await asyncio.shield(self.queue.set_visibility(message, 0))
                except QueueError as exc:
                    log.warning("release_failed", error=str(exc))
            case Disposition.DEAD_LETTER:
                self.metrics.messages_dead_lettered.labels(message.resource).inc()
                await self.queue.dead_letter(message, decision.text or "dead-lettered")
            case Disposition.LEAVE:
                pass

    async def _delete_quietly(self, message: JobMessage) -> None:
        try:
            await self.queue.delete(message)
        except QueueError as exc:
            # The outcome is recorded; a redelivery will find it and delete then.
            self.metrics.sqs_errors.labels("delete").inc()
            log.warning("delete_failed", error=str(exc))

    def _count(self, kind: str, decision: Decision, duration_s: float, attempt: int) -> None:
        assert decision.outcome is not None
        outcome = decision.outcome.value
        self.metrics.jobs_finished.labels(kind, outcome).inc()
        self.metrics.job_duration.labels(kind, outcome).observe(duration_s)
        log.info(
            "job_finished",
            outcome=outcome,
            duration_s=round(duration_s, 4),
            attempt=attempt,
            error=decision.text,
        )


_SETTLE_CANCEL = Decision(Write.SETTLE_CANCEL, Disposition.DELETE, Outcome.CANCELLED)


def _is_our_completion(task: Task, completion: Completion) -> bool:
    """Whether a completed record is the one this run wrote (result keys are per attempt)."""
    if task.status != "completed":
        return False
    if completion.result_key is not None:
        return task.result_key == completion.result_key
    return bool(task.result == json.loads(json.dumps(completion.result)))
