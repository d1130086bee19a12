"""Running one SQS message: claim the task, run its handler, record the outcome.

The order of writes is what makes a job end exactly once:

* the task is claimed with a conditional write before anything runs, so a
  redelivered message finds it finished (and is deleted) or owned by a live
  lease (and is deferred until that lease ends);
* the message is deleted only after the final status is written, so a crash
  at any point leaves a message that brings the job back;
* a lease in the record is renewed together with the message visibility,
  so a dead worker's job is taken over once both run out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog
from pydantic import ValidationError

from shortdrama_worker.context import GpuSlots, RunContext
from shortdrama_worker.errors import JobError, PermanentJobError, TransientJobError
from shortdrama_worker.handlers.base import Handler, StoredResult
from shortdrama_worker.inputs import InputFetcher
from shortdrama_worker.metrics import Metrics
from shortdrama_worker.plugins import HandlerRegistry
from shortdrama_worker.queue import JobMessage, JobQueue, MalformedMessage, QueueError
from shortdrama_worker.results import ResultStore
from shortdrama_worker.settings import Settings
from shortdrama_worker.store import StaleTransition, StoreError, Task, TaskStore
from shortdrama_worker.webhooks import WebhookSender

log = structlog.get_logger("shortdrama_worker.runner")


@dataclass
class RunningJob:
    """A job this process is running; ``reason`` says why it was cancelled, if it was."""

    task_id: str
    kind: str
    run: asyncio.Task[dict[str, Any]] | None = None
    reason: str | None = None
    started: float = field(default_factory=time.monotonic)

    def cancel(self, reason: str) -> bool:
        if self.run is None or self.run.done():
            return False
        self.reason = self.reason or reason
        return self.run.cancel()


@dataclass(frozen=True)
class Outcome:
    name: str
    attempt: int
    error: str | None = None


class JobRunner:
    """Processes messages for every installed handler."""

    def __init__(
        self,
        *,
        settings: Settings,
        owner: str,
        store: TaskStore,
        queue: JobQueue,
        results: ResultStore,
        fetcher: InputFetcher,
        http: aiohttp.ClientSession,
        registry: HandlerRegistry,
        handlers: dict[str, Handler],
        metrics: Metrics,
        gpu_slots: GpuSlots,
        webhooks: WebhookSender,
    ) -> None:
        self.settings = settings
        self.owner = owner
        self.store = store
        self.queue = queue
        self.results = results
        self.fetcher = fetcher
        self.http = http
        self.registry = registry
        self.handlers = handlers
        self.metrics = metrics
        self.gpu_slots = gpu_slots
        self.webhooks = webhooks
        self.running: dict[str, RunningJob] = {}
        caps = settings.consumer.kind_concurrency
        self._kind_caps = {kind: asyncio.Semaphore(n) for kind, n in caps.items()}

    @property
    def lease_s(self) -> float:
        return float(self.settings.queues.visibility_timeout_s)

    def backoff_s(self, attempt: int, retry_after: float | None = None) -> float:
        """Exponential backoff with jitter, or the provider's own Retry-After."""
        c = self.settings.consumer
        if retry_after is not None:
            return min(max(retry_after, 0.0), c.backoff_max_s)
        delay: float = min(c.backoff_base_s * 2.0 ** max(attempt - 1, 0), c.backoff_max_s)
        return delay * random.uniform(0.8, 1.2)

    def cancel_local(self, task_id: str, reason: str) -> bool:
        job = self.running.get(task_id)
        return job.cancel(reason) if job else False

    async def handle(self, message: JobMessage) -> None:
        """Process one message; never raises except when this task is cancelled."""
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(message_id=message.message_id)
        try:
            await self._handle(message)
        except (StoreError, QueueError) as exc:
            # AWS trouble mid-way: leave the message; it comes back after its
            # visibility timeout and the conditional writes sort out the state.
            log.warning("message_left_for_redelivery", error=str(exc))
        except Exception:
            log.exception("message_handling_crashed")

    async def _handle(self, message: JobMessage) -> None:
        try:
            task_id, kind = message.parse()
        except MalformedMessage as exc:
            log.error("malformed_message", error=str(exc), body=message.body[:200])
            await self._dead_letter(message, f"malformed message: {exc}")
            return
        structlog.contextvars.bind_contextvars(job_id=task_id, kind=kind)
        handler = self.handlers.get(kind)
        if handler is None:
            # Another instance may serve this kind; the redrive policy sends
            # it to the DLQ if none does.
            log.warning("kind_not_served_here")
            await self.queue.set_visibility(message, 30)
            return
        # Claim first, read only on refusal: the common path is one write.
        try:
            task = await self.store.claim(
                task_id, kind, self.owner, self.lease_s, self.settings.consumer.max_attempts
            )
        except StaleTransition as stale:
            if not self._our_own_claim(stale.task):
                await self._refused(stale.task, message, kind)
                return
            # Our claim landed but its answer was lost and the client's retry
            # found our own lease: the job is ours.
            assert stale.task is not None
            task = stale.task
        await self._run(task, message, handler)

    def _our_own_claim(self, task: Task | None) -> bool:
        return (
            task is not None
            and task.owner == self.owner
            and task.lease_live(time.time())
            and task.task_id not in self.running
        )

    async def _refused(self, task: Task | None, message: JobMessage, kind: str) -> None:
        """The claim was refused; the record as it stands says why."""
        if task is None:
            # The API removes a record whose message failed to queue; a message
            # can still surface if SQS accepted it after reporting an error.
            log.warning("message_for_unknown_task")
            await self.queue.delete(message)
        elif task.job_type != kind:
            reason = f"message kind {kind!r} != task kind {task.job_type!r}"
            await self._dead_letter(message, reason)
        elif task.cancel_requested and not task.terminal and not task.lease_live(time.time()):
            await self._settle_cancel(task, message)
        elif await self._settled(task, message):
            pass
        elif task.attempts >= self.settings.consumer.max_attempts:
            # Out of attempts and nobody runs it: e.g. its last worker was
            # killed mid-run. It must not stay `processing` forever.
            await self._give_up(task, message)
        else:
            # A race with another claimant; look again shortly.
            await self.queue.set_visibility(message, 5)

    async def _settled(self, task: Task, message: JobMessage) -> bool:
        """Deal with a message whose task is finished or owned by a live worker."""
        now = time.time()
        if task.terminal:
            log.info("duplicate_message_for_finished_job", status=task.status)
            await self.queue.delete(message)
            return True
        if task.lease_live(now):
            # Someone is running it. Deleting this copy could lose the job if
            # that worker dies; hide it until the lease would have run out.
            remaining = (task.lease_until or now) - now
            log.info("job_owned_elsewhere", owner=task.owner, lease_left_s=round(remaining, 1))
            await self.queue.set_visibility(message, remaining + 1)
            return True
        return False

    async def _settle_cancel(self, task: Task, message: JobMessage) -> None:
        """A cancel asked for while the job was between runs: finish it as cancelled."""
        try:
            cancelled = await self.store.settle_cancel(task.task_id)
        except StaleTransition:
            await self.queue.set_visibility(message, 5)  # it moved on; look again
            return
        self.webhooks.schedule(cancelled)
        await self._delete_quietly(message)
        self._finished(task.job_type, "cancelled", 0.0, task.attempts, None)

    async def _give_up(self, task: Task, message: JobMessage) -> None:
        last = task.error_message or "worker lost mid-run"
        text = f"gave up after {task.attempts} attempts; last error: {last}"
        try:
            failed = await self.store.fail_abandoned(
                task.task_id, code="attempts_exhausted", message=text
            )
        except StaleTransition:
            return
        self.webhooks.schedule(failed)
        await self._dead_letter(message, text)
        self._finished(task.job_type, "failed", 0.0, task.attempts, text)

    async def _dead_letter(self, message: JobMessage, reason: str) -> None:
        self.metrics.messages_dead_lettered.labels(message.resource).inc()
        await self.queue.dead_letter(message, reason)

    async def _run(self, task: Task, message: JobMessage, handler: Handler) -> None:
        kind = task.job_type
        spec = self.registry.by_kind[kind]
        if message.sent_at:
            self.metrics.queue_wait.labels(kind).observe(max(0.0, time.time() - message.sent_at))
        job = RunningJob(task.task_id, kind)
        self.running[task.task_id] = job
        self.metrics.in_flight.labels(kind).inc()
        heartbeat = asyncio.create_task(self._heartbeat(job, message))
        ctx = RunContext(
            task=task,
            owner=self.owner,
            log=log.bind(attempt=task.attempts),
            http=self.http,
            settings=handler.env.settings,
            metrics=self.metrics,
            store=self.store,
            results=self.results,
            fetcher=self.fetcher,
            gpu_slots=self.gpu_slots,
            progress_interval_s=self.settings.consumer.progress_min_interval_s,
        )
        started = time.monotonic()
        try:
            job.run = asyncio.create_task(self._invoke(handler, spec.cls.timeout_s, task, ctx))
            result: dict[str, Any] | None = None
            error: JobError | None = None
            cancelled = False
            try:
                result = await job.run
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
                cancelled = True
            except JobError as exc:
                error = exc
            except Exception as exc:
                log.exception("handler_crashed")
                error = TransientJobError(
                    f"handler crashed: {type(exc).__name__}: {exc}", code="handler_crashed"
                )
            # Stop the heartbeat before the outcome's own visibility change, so a
            # late heartbeat cannot undo a hand-back (0 s) or a backoff.
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
            if cancelled:
                outcome = await self._after_cancel(task, message, job.reason or "shutdown")
            elif error is not None:
                outcome = await self._after_error(task, message, error)
            else:
                assert result is not None
                outcome = await asyncio.shield(self._after_success(task, message, ctx, result))
        finally:
            heartbeat.cancel()
            ctx.release()
            self.running.pop(task.task_id, None)
            self.metrics.in_flight.labels(kind).dec()
        self._finished(
            kind, outcome.name, time.monotonic() - started, outcome.attempt, outcome.error
        )

    async def _invoke(
        self, handler: Handler, timeout_s: float, task: Task, ctx: RunContext
    ) -> dict[str, Any]:
        try:
            params = handler.input_model.model_validate(task.input)
        except ValidationError as exc:
            raise PermanentJobError(f"input no longer valid: {exc}", code="invalid_input") from None
        cap = self._kind_caps.get(task.job_type)
        # Waiting for the per-kind cap is not the handler's time: it stays
        # outside the timeout, or queued jobs would fail without running.
        async with cap if cap is not None else contextlib.nullcontext():
            try:
                async with asyncio.timeout(timeout_s):
                    return await handler.run(params, ctx)
            except TimeoutError:
                raise PermanentJobError(
                    f"timed out after {timeout_s:g} s", code="timeout"
                ) from None

    async def _after_success(
        self, task: Task, message: JobMessage, ctx: RunContext, result: dict[str, Any]
    ) -> Outcome:
        primary = ctx.primary
        if primary is not None:
            result = {**result, "files": [s.__dict__ for s in ctx.stored]}
        try:
            done = await self.store.complete(
                task.task_id,
                self.owner,
                result=result,
                result_url=primary.url if primary else None,
                result_key=primary.key if primary else None,
            )
        except StaleTransition as stale:
            done_before = stale.task
            if done_before is None or not _is_our_completion(done_before, primary, result):
                # We lost the lease (a stall outlived it) and another worker
                # owns the job now: its outcome counts, ours is discarded.
                owner = done_before.owner if done_before else None
                log.warning("result_discarded_lost_lease", now_owner=owner)
                return Outcome("lost", task.attempts)
            # Our write landed but its answer was lost; the retry saw it done.
            done = done_before
        self.webhooks.schedule(done)
        await self._delete_quietly(message)
        return Outcome("completed", task.attempts)

    async def _after_error(self, task: Task, message: JobMessage, exc: JobError) -> Outcome:
        attempts = task.attempts
        if isinstance(exc, TransientJobError) and attempts < self.settings.consumer.max_attempts:
            delay = self.backoff_s(attempts, exc.retry_after)
            try:
                back = await self.store.retry_later(
                    task.task_id, self.owner, code=exc.code, message=exc.message
                )
            except StaleTransition:
                return Outcome("lost", attempts, exc.message)
            if back.cancel_requested:
                # Cancelled while this run was failing: no retry for it.
                await self._settle_cancel(back, message)
                return Outcome("lost", attempts, exc.message)  # counted by _settle_cancel
            self.metrics.retries.labels(task.job_type).inc()
            await self.queue.set_visibility(message, delay)
            log.info("job_retry_scheduled", delay_s=round(delay, 1), error=exc.message)
            return Outcome("retried", attempts, exc.message)
        text = exc.message
        if isinstance(exc, TransientJobError):
            text = f"gave up after {attempts} attempts: {exc.message}"
        try:
            done = await self.store.fail(task.task_id, self.owner, code=exc.code, message=text)
        except StaleTransition:
            return Outcome("lost", attempts, text)
        self.webhooks.schedule(done)
        if isinstance(exc, TransientJobError):
            await self._dead_letter(message, text)
        else:
            await self._delete_quietly(message)
        return Outcome("failed", attempts, text)

    async def _after_cancel(self, task: Task, message: JobMessage, reason: str) -> Outcome:
        if reason == "cancelled":
            try:
                done = await asyncio.shield(self.store.cancelled(task.task_id, self.owner))
            except StaleTransition:
                return Outcome("lost", task.attempts)
            self.webhooks.schedule(done)
            await self._delete_quietly(message)
            return Outcome("cancelled", task.attempts)
        if reason == "lost":
            return Outcome("lost", task.attempts)
        # Shutdown: hand the job back so another instance picks it up at once.
        try:
            back = await asyncio.shield(self.store.release(task.task_id, self.owner))
            if back.cancel_requested:
                await asyncio.shield(self._settle_cancel(back, message))
                return Outcome("lost", task.attempts)  # counted by _settle_cancel
            await asyncio.shield(self.queue.set_visibility(message, 0))
        except (StaleTransition, StoreError, QueueError) as exc:
            log.warning("release_failed", error=str(exc))
        return Outcome("returned", task.attempts)

    async def _heartbeat(self, job: RunningJob, message: JobMessage) -> None:
        """Keep the message invisible and the lease alive; watch for a cancel request."""
        interval = self.settings.heartbeat_interval_s
        poll = min(self.settings.consumer.cancel_poll_s, interval)
        last_renewal = time.monotonic()
        while True:
            await asyncio.sleep(poll)
            renewing = time.monotonic() - last_renewal >= interval
            if renewing:
                # The lease is what keeps other claimants off (a redelivered
                # copy is deferred while it lives), so it is renewed even
                # when SQS refuses to extend the message.
                try:
                    await self.queue.set_visibility(message, self.lease_s)
                except QueueError as exc:
                    self.metrics.sqs_errors.labels("visibility").inc()
                    log.warning("visibility_not_extended", error=str(exc))
            try:
                if renewing:
                    task = await self.store.renew(job.task_id, self.owner, self.lease_s)
                    last_renewal = time.monotonic()
                    self.metrics.heartbeats.labels(message.resource).inc()
                else:
                    current = await self.store.get(job.task_id)
                    if current is None:
                        continue
                    task = current
            except StaleTransition:
                log.warning("lease_lost")
                job.cancel("lost")
                return
            except StoreError as exc:
                log.warning("lease_not_renewed", error=str(exc))
                continue
            if task.cancel_requested:
                log.info("cancel_requested")
                job.cancel("cancelled")
                return
            if task.owner != self.owner:
                job.cancel("lost")
                return

    async def _delete_quietly(self, message: JobMessage) -> None:
        try:
            await self.queue.delete(message)
        except QueueError as exc:
            # The outcome is recorded; a redelivery will find it and delete then.
            self.metrics.sqs_errors.labels("delete").inc()
            log.warning("delete_failed", error=str(exc))

    def _finished(
        self, kind: str, outcome: str, duration: float, attempt: int, error: str | None
    ) -> None:
        if outcome != "lost":
            self.metrics.jobs_finished.labels(kind, outcome).inc()
            self.metrics.job_duration.labels(kind, outcome).observe(duration)
        log.info(
            "job_finished",
            outcome=outcome,
            duration_s=round(duration, 4),
            attempt=attempt,
            error=error,
        )


def _is_our_completion(task: Task, primary: StoredResult | None, result: dict[str, Any]) -> bool:
    """Whether a completed record is the one this run wrote (result keys are per attempt)."""
    if task.status != "completed":
        return False
    if primary is not None:
        return task.result_key == primary.key
    return bool(task.result == json.loads(json.dumps(result)))
