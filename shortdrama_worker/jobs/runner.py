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
import random
import time
from dataclasses import dataclass, field
from typing import Any

import structlog
from pydantic import ValidationError

from shortdrama_worker.aws.queue import JobMessage, JobQueue, MalformedMessage, QueueError
from shortdrama_worker.aws.results import ResultStore
from shortdrama_worker.aws.store import StaleTransition, StoreError, Task, TaskStore
from shortdrama_worker.contract.errors import JobError, PermanentJobError, TransientJobError
from shortdrama_worker.faces.boxes import FaceDetector
from shortdrama_worker.inputs.fetch import InputFetcher
from shortdrama_worker.jobs.context import RunContext
from shortdrama_worker.jobs.costs import estimate, reused_cost, usage_of
from shortdrama_worker.jobs.gates import Gates
from shortdrama_worker.jobs.ledger import Ledger
from shortdrama_worker.jobs.outcomes import (
    Attempt,
    Cancelled,
    CancelReason,
    Failed,
    Succeeded,
    decide_attempt,
    decide_refusal,
)
from shortdrama_worker.jobs.reuse import Reuser
from shortdrama_worker.jobs.settle import Completion, Settler
from shortdrama_worker.jobs.view import files_of, freeze_result
from shortdrama_worker.jobs.webhooks import WebhookSender
from shortdrama_worker.metrics import Metrics
from shortdrama_worker.plugins import AnyHandler, HandlerRegistry
from shortdrama_worker.provenance import ContentCredentials
from shortdrama_worker.settings import Settings

log = structlog.get_logger("shortdrama_worker.jobs.runner")

# How long a message for a kind whose handler is not ready stays hidden.
_HELD_VISIBILITY_S = 30


@dataclass
class RunningJob:
    """A job this process is running; ``reason`` says why it was cancelled, if it was."""

    task_id: str
    kind: str
    run: asyncio.Task[dict[str, Any]] | None = None
    reason: CancelReason | None = None
    started: float = field(default_factory=time.monotonic)

    def cancel(self, reason: CancelReason) -> bool:
        if self.run is None or self.run.done():
            return False
        self.reason = self.reason or reason
        return self.run.cancel()


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
        registry: HandlerRegistry,
        handlers: dict[str, AnyHandler],
        metrics: Metrics,
        gates: Gates,
        webhooks: WebhookSender,
        faces: FaceDetector | None = None,
        credentials: ContentCredentials | None = None,
        reuser: Reuser | None = None,
        ledger: Ledger | None = None,
    ) -> None:
        self.settings = settings
        self.owner = owner
        self.store = store
        self.queue = queue
        self.results = results
        self.fetcher = fetcher
        self.faces = faces
        self.registry = registry
        self.handlers = handlers
        self.metrics = metrics
        self.gates = gates
        self.webhooks = webhooks
        self.reuser = reuser
        self.settler = Settler(
            owner=owner,
            store=store,
            queue=queue,
            webhooks=webhooks,
            metrics=metrics,
            ledger=ledger,
        )
        self.credentials = credentials
        self.running: dict[str, RunningJob] = {}

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

    def cancel_local(self, task_id: str, reason: CancelReason) -> bool:
        job = self.running.get(task_id)
        return job.cancel(reason) if job else False

    def cancel_all(self, reason: CancelReason) -> int:
        """Cancel every job this process runs; how many were running."""
        return sum(job.cancel(reason) for job in list(self.running.values()))

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
            self.metrics.messages_dead_lettered.labels(message.resource).inc()
            await self.queue.dead_letter(message, f"malformed message: {exc}")
            return
        structlog.contextvars.bind_contextvars(job_id=task_id, kind=kind)
        handler = self.handlers.get(kind)
        if handler is None:
            # Another instance may serve this kind; the redrive policy sends
            # it to the DLQ if none does.
            log.warning("kind_not_served_here")
            await self.queue.set_visibility(message, 30)
            return
        if not handler.ready():
            # Held, not claimed: e.g. no ComfyUI here has this kind's models
            # while other kinds of the same queue run. Claiming would spend an
            # attempt on a job that cannot run; another instance, or this one
            # once ready, takes it (the reconciler re-sends it if SQS's
            # redrive moves it to the DLQ meanwhile).
            log.info("job_held_handler_not_ready")
            await self.queue.set_visibility(message, _HELD_VISIBILITY_S)
            return
        # Claim first, read only on refusal: the common path is one write.
        try:
            task = await self.store.claim(
                task_id, kind, self.owner, self.lease_s, self.settings.consumer.max_attempts
            )
        except StaleTransition as stale:
            if not self._our_own_claim(stale.task):
                decision = decide_refusal(
                    stale.task,
                    kind=kind,
                    now=time.time(),
                    max_attempts=self.settings.consumer.max_attempts,
                )
                await self.settler.apply(decision, message, stale.task)
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

    async def _run(self, task: Task, message: JobMessage, handler: AnyHandler) -> None:
        kind = task.job_type
        spec = self.registry.by_kind[kind]
        if message.sent_at:
            self.metrics.queue_wait.labels(kind).observe(max(0.0, time.time() - message.sent_at))
        job = RunningJob(task.task_id, kind)
        self.running[task.task_id] = job
        self.metrics.in_flight.labels(kind).inc()
        heartbeat = asyncio.create_task(self._heartbeat(job, message))
        ctx = self._context(task, handler)
        started = time.monotonic()
        try:
            job.run = asyncio.create_task(self._invoke(handler, spec.cls.timeout_s, task, ctx))
            attempt = await self._attempt(job)
            await ctx.stop_progress()
            # Stop the heartbeat before the outcome's own visibility change, so a
            # late heartbeat cannot undo a hand-back (0 s) or a backoff.
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
            decision = decide_attempt(
                attempt,
                attempts=task.attempts,
                max_attempts=self.settings.consumer.max_attempts,
                backoff_s=self._backoff_for(attempt, task.attempts),
            )
            completion = self._completion(attempt, ctx)
            # The outcome is written whatever happens to this task now: a
            # shutdown must not leave a finished job unrecorded.
            await asyncio.shield(
                self.settler.apply(
                    decision,
                    message,
                    task,
                    duration_s=time.monotonic() - started,
                    completion=completion,
                )
            )
        finally:
            heartbeat.cancel()
            ctx.release()  # its decoded inputs no longer count against the pixel budget
            self.running.pop(task.task_id, None)
            self.metrics.in_flight.labels(kind).dec()

    async def _attempt(self, job: RunningJob) -> Attempt:
        """Wait for the handler; what it produced, as data."""
        assert job.run is not None
        try:
            return Succeeded(await job.run)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            return Cancelled(job.reason or CancelReason.SHUTDOWN)
        except JobError as exc:
            return Failed(exc)
        except Exception as exc:
            log.exception("handler_crashed")
            return Failed(
                TransientJobError(
                    f"handler crashed: {type(exc).__name__}: {exc}", code="handler_crashed"
                )
            )

    def _backoff_for(self, attempt: Attempt, attempts: int) -> float:
        if isinstance(attempt, Failed) and isinstance(attempt.error, TransientJobError):
            return self.backoff_s(attempts, attempt.error.retry_after)
        return 0.0

    def _completion(self, attempt: Attempt, ctx: RunContext) -> Completion | None:
        if not isinstance(attempt, Succeeded):
            return None
        currency = self.settings.costs.currency
        if ctx.reused is not None:
            source = ctx.reused
            return Completion(
                attempt.result,
                source.result_key,
                cost=reused_cost(source.cost, currency),
                reused_from=source.task_id,
            )
        result = attempt.result
        primary = ctx.primary
        if primary is not None:
            result = {**result, "files": files_of(ctx.stored)}
        cost = estimate(usage_of(result, ctx.gpu_seconds), self.settings.costs)
        # Keys, not URLs, are stored: URLs are rendered when the job is read.
        return Completion(
            freeze_result(result),
            primary.key if primary else None,
            cost=cost,
            reuse_key=ctx.reuse_key,
        )

    def _context(self, task: Task, handler: AnyHandler) -> RunContext:
        return RunContext(
            task=task,
            owner=self.owner,
            log=log.bind(attempt=task.attempts),
            settings=handler.env.settings,
            metrics=self.metrics,
            store=self.store,
            results=self.results,
            fetcher=self.fetcher,
            gpu_slots=self.gates.gpu,
            progress_interval_s=self.settings.consumer.progress_min_interval_s,
            progress_delay_s=self.settings.consumer.progress_delay_s,
            faces=self.faces,
            credentials=self.credentials,
            provenance=handler.provenance,
        )

    async def _invoke(
        self, handler: AnyHandler, timeout_s: float, task: Task, ctx: RunContext
    ) -> dict[str, Any]:
        try:
            params = handler.input_model.model_validate(task.input)
        except ValidationError as exc:
            raise PermanentJobError(f"input no longer valid: {exc}", code="invalid_input") from None
        # Waiting for the per-kind cap is not the handler's time: it stays
        # outside the timeout, or queued jobs would fail without running.
        async with self.gates.kind_cap(task.job_type):
            try:
                async with asyncio.timeout(timeout_s):
                    reused = await self._reuse(task, handler, params, ctx)
                    return reused if reused is not None else await handler.run(params, ctx)
            except TimeoutError:
                raise PermanentJobError(
                    f"timed out after {timeout_s:g} s", code="timeout"
                ) from None

    async def _reuse(
        self, task: Task, handler: AnyHandler, params: Any, ctx: RunContext
    ) -> dict[str, Any] | None:
        """An earlier identical job's result (kept on ``ctx.reused``), if this job may reuse one."""
        if self.reuser is None or not self.reuser.wanted(task, handler):
            return None
        spec = self.registry.by_kind[task.job_type]
        ctx.reuse_key = await self.reuser.key_for(task, spec, handler, params, ctx.prefetch)
        source = await self.reuser.find(task, ctx.reuse_key)
        if source is None or source.result is None:
            return None
        ctx.reused = source
        ctx.log.info("result_reused", source_job_id=source.task_id)
        return source.result

    async def _heartbeat(self, job: RunningJob, message: JobMessage) -> None:
        """Keep the message invisible and the lease alive; watch for a cancel request."""
        interval = self.settings.heartbeat_interval_s
        poll = min(self.settings.consumer.cancel_poll_s, interval)
        last_renewal = time.monotonic()
        while True:
            await asyncio.sleep(poll)
            renewing = time.monotonic() - last_renewal >= interval
            if renewing:
                await self._extend_visibility(message)
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
                job.cancel(CancelReason.LEASE_LOST)
                return
            except StoreError as exc:
                log.warning("lease_not_renewed", error=str(exc))
                continue
            if task.cancel_requested:
                log.info("cancel_requested")
                job.cancel(CancelReason.REQUESTED)
                return
            if task.owner != self.owner:
                job.cancel(CancelReason.LEASE_LOST)
                return

    async def _extend_visibility(self, message: JobMessage) -> None:
        # The lease is what keeps other claimants off (a redelivered copy is
        # deferred while it lives), so it is renewed even when SQS refuses to
        # extend the message.
        try:
            await self.queue.set_visibility(message, self.lease_s)
        except QueueError as exc:
            self.metrics.sqs_errors.labels("visibility").inc()
            log.warning("visibility_not_extended", error=str(exc))
