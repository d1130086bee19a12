"""The in-process SQS consumer: long polling, capacity-bound, graceful to stop.

It holds at most ``max_in_flight`` running jobs plus ``prefetch`` received
messages waiting for a slot per queue. With no prefetch (the GPU default) SQS
is asked only for free slots, so no message waits here while an idle machine
elsewhere could run it. With some (the CPU default), it asks again only once
half the room is free, or the waiting messages have all started: ten messages
per ReceiveMessage instead of one each time a slot frees. Stopping happens in
two phases: stop receiving (an in-flight long poll is allowed to finish and
its messages are handed straight back, as are messages still waiting for a
slot), let running jobs finish within the grace period, then cancel the rest,
which hands them back to the queue.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from shortdrama_worker.aws.queue import JobMessage, JobQueue, QueueError
from shortdrama_worker.jobs.gates import Gates
from shortdrama_worker.jobs.outcomes import CancelReason
from shortdrama_worker.jobs.runner import JobRunner
from shortdrama_worker.metrics import Metrics
from shortdrama_worker.plugins import Readiness
from shortdrama_worker.settings import Resource, Settings

log = structlog.get_logger("shortdrama_worker.jobs.consumer")

_MAX_POLL_BACKOFF_S = 30.0
_NOT_READY_RECHECK_S = 2.0


def _cancelling() -> bool:
    """Whether the current task is being cancelled (its CancelledError in flight)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class _Holding:
    """Messages one poll loop holds: ``held`` in all, ``waiting`` of them for a slot."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.waiting = 0
        # Refill when half the room is free: receives of several messages,
        # not one per finished job.
        self.refill = max(1, min(10, limit) // 2)
        self.changed = asyncio.Event()

    @property
    def room(self) -> int:
        return self.limit - self.held

    def want(self) -> int:
        """How many to ask SQS for now; 0 means wait."""
        if self.room >= self.refill or (self.room > 0 and self.waiting == 0):
            return min(10, self.room)
        return 0

    def release(self, n: int = 1) -> None:
        self.held -= n
        self.changed.set()


class Consumer:
    """One poll loop per consumed resource class, feeding ``JobRunner``."""

    def __init__(
        self,
        settings: Settings,
        queue: JobQueue,
        runner: JobRunner,
        *,
        metrics: Metrics,
        gates: Gates,
        readiness: Readiness,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.runner = runner
        self.metrics = metrics
        self.gates = gates
        self.readiness = readiness
        self.resources: list[Resource] = [
            r for r in settings.consumer.consume if readiness.serves(r)
        ]
        self._stopping = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._jobs: set[asyncio.Task[None]] = set()
        self.running = False
        self.draining = False
        self.last_poll_ok: bool | None = None
        self._holdings: list[_Holding] = []

    @property
    def alive(self) -> bool:
        """Healthy for the watchdog: draining on purpose, or every poll loop running."""
        if self.draining:
            return True
        return self.running and all(not t.done() for t in self._loops)

    @property
    def waiting(self) -> int:
        """Messages received ahead (prefetch), not started yet."""
        return sum(holding.waiting for holding in self._holdings)

    @property
    def in_flight(self) -> int:
        """Jobs started and not finished."""
        return len(self._jobs) - self.waiting

    def start(self) -> None:
        for resource in self.resources:
            self._loops.append(asyncio.create_task(self._poll(resource), name=f"poll-{resource}"))
        self.running = True
        log.info("consumer_started", resources=self.resources)

    async def stop(self) -> None:
        """Drain: stop receiving, wait out the grace period, then hand jobs back."""
        if self.draining:
            return
        self.draining = True
        self._stopping.set()
        # The grace period runs while a long poll in progress finishes
        # (≤ wait_time_s) rather than being dropped: a dropped ReceiveMessage
        # leaves its messages invisible. What it brings is handed straight back.
        jobs = set(self._jobs)
        if jobs:
            log.info("draining", in_flight=len(jobs))
            _, pending = await asyncio.wait(jobs, timeout=self.settings.consumer.shutdown_grace_s)
            if pending:
                log.warning("grace_period_over", returning=len(pending))
                self.runner.cancel_all(CancelReason.SHUTDOWN)
                await asyncio.gather(*pending, return_exceptions=True)
        await asyncio.gather(*self._loops, return_exceptions=True)
        self.running = False
        log.info("consumer_stopped")

    async def _poll(self, resource: Resource) -> None:
        capacity = self.settings.consumer.max_in_flight[resource]
        # A queue given no slots takes nothing, not even ahead: a message
        # received here would wait for a slot that never comes.
        prefetch = self.settings.consumer.prefetch.get(resource, 0) if capacity else 0
        holding = _Holding(capacity + prefetch)
        self._holdings.append(holding)
        run_slots = self.gates.run_slots[resource]
        failures = 0
        while not self._stopping.is_set():
            if not self.readiness.ready(resource):
                # e.g. ComfyUI is down: taking messages now would only burn
                # their attempts. Leave them queued for a healthy instance.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), _NOT_READY_RECHECK_S)
                continue
            wanted = await self._room_or_stop(holding)
            if not wanted:
                break
            holding.held += wanted
            try:
                messages = await self.queue.receive(
                    resource, wanted, self.settings.queues.wait_time_s
                )
                failures = 0
                self.last_poll_ok = True
            except QueueError as exc:
                holding.release(wanted)
                failures += 1
                self.last_poll_ok = False
                self.metrics.sqs_errors.labels("receive").inc()
                delay = min(_MAX_POLL_BACKOFF_S, 0.5 * 2**failures)
                log.warning("receive_failed", error=str(exc), retry_in_s=delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                continue
            holding.release(wanted - len(messages))
            if messages:
                self.metrics.messages_received.labels(resource).inc(len(messages))
            for message in messages:
                if self._stopping.is_set():
                    holding.release()
                    with contextlib.suppress(QueueError):
                        await self.queue.set_visibility(message, 0)
                    continue
                holding.waiting += 1
                job = asyncio.create_task(self._run_when_free(message, run_slots, holding))
                self._jobs.add(job)
                job.add_done_callback(self._jobs.discard)
                job.add_done_callback(lambda _t: holding.release())

    async def _room_or_stop(self, holding: _Holding) -> int:
        """Wait until ``holding`` wants more messages (how many), or stopping (0)."""
        while not self._stopping.is_set():
            wanted = holding.want()
            if wanted:
                return wanted
            holding.changed.clear()
            changed = asyncio.ensure_future(holding.changed.wait())
            stop = asyncio.ensure_future(self._stopping.wait())
            await asyncio.wait({changed, stop}, return_when=asyncio.FIRST_COMPLETED)
            changed.cancel()
            stop.cancel()
        return 0

    async def _run_when_free(
        self, message: JobMessage, run_slots: asyncio.Semaphore, holding: _Holding
    ) -> None:
        """Run ``message`` once a slot frees; hand it back untouched if stopping comes first.

        A message waiting here stays invisible to other instances only for
        the queue's visibility timeout, and no heartbeat covers it until its
        job starts, so the wait renews the visibility every half timeout.
        Handing it back instead would count another receive towards the
        redrive policy's limit for a job that never ran.
        """
        visibility = self.settings.queues.visibility_timeout_s
        # Renewed often enough that the job's first heartbeat, one interval
        # after it starts, still finds the message hidden.
        renew_every = min(visibility, visibility - self.settings.heartbeat_interval_s) / 2
        try:
            while True:
                started = await self._acquire_or_stop(run_slots, timeout=renew_every)
                if started is not None:
                    break
                try:
                    await self.queue.set_visibility(message, visibility)
                except QueueError as exc:
                    # It may reappear elsewhere; the conditional claim keeps
                    # the job to one run whichever instance gets there first.
                    log.warning("prefetched_visibility_not_renewed", error=str(exc))
        finally:
            holding.waiting -= 1
            holding.changed.set()
        if not started:
            with contextlib.suppress(QueueError):
                await self.queue.set_visibility(message, 0)
            return
        try:
            await self.runner.handle(message)
        finally:
            run_slots.release()

    async def _acquire_or_stop(
        self, slots: asyncio.Semaphore, *, timeout: float | None = None
    ) -> bool | None:
        """Wait for a free slot (``True``), unless stopping comes first (``False``).

        ``None`` when ``timeout`` runs out first. With every slot busy (the
        normal state of a GPU box) a plain acquire would hold the drain until
        some job ended, past the grace period.
        """
        if self._stopping.is_set():
            return False
        acquire = asyncio.ensure_future(slots.acquire())
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait(
                {acquire, stop}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stop.cancel()
            if not acquire.done():
                acquire.cancel()
            # The acquire may have won the slot while being cancelled: settle
            # it, and give the slot back if this wait is itself cancelled.
            won = (await asyncio.gather(acquire, return_exceptions=True))[0] is True
            if won and (self._stopping.is_set() or _cancelling()):
                slots.release()
                won = False
        if won:
            return True
        return False if self._stopping.is_set() else None
