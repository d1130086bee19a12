"""Waiting for a job to change without holding anything a job needs.

Writes made by this process (progress, status changes, cancels) wake waiters
at once through the store's listeners, and hand them the record as written,
so a waiter here does not read it back; changes made by other instances are
seen by reading the record again, with a backoff. No consumer slot, queue
message or lease is involved.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Callable, Iterator

from shortdrama_worker.aws.store import Task, TaskStore

_FIRST_POLL_S = 0.25
_MAX_POLL_S = 2.0
# For a record whose every change is written here: only a safety net.
_QUIET_POLL_S = 10.0


class _Waiter:
    """One wait: woken by a write here (with the record written) or on shutdown."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.written: Task | None = None

    def take(self) -> Task | None:
        written, self.written = self.written, None
        return written


class JobWatch:
    """Wakes waiters when this process writes a record, and on shutdown."""

    def __init__(self, store: TaskStore, *, local: Callable[[Task], bool] | None = None) -> None:
        self.store = store
        self.local = local or (lambda _: False)
        """Whether every change to this record will be written by this process (the
        job runs here, or no other instance shares the store): then a waiter is woken
        by the write itself, and reading the record again on a timer only loads the store."""
        self._waiters: dict[str, set[_Waiter]] = {}
        self.closing = asyncio.Event()
        store.listeners.append(self.notify)

    def notify(self, task: Task) -> None:
        for waiter in self._waiters.get(task.task_id, ()):
            # Two writes in flight may answer out of order: keep the later one.
            if _later(task, waiter.written):
                waiter.written = task
            waiter.event.set()

    def close(self) -> None:
        """End every wait and stream now (the server is shutting down)."""
        self.closing.set()
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.event.set()

    @contextlib.contextmanager
    def _watching(self, task_id: str) -> Iterator[_Waiter]:
        waiter = _Waiter()
        self._waiters.setdefault(task_id, set()).add(waiter)
        try:
            yield waiter
        finally:
            waiters = self._waiters.get(task_id)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[task_id]

    async def until_finished(self, task_id: str, timeout_s: float) -> Task | None:
        """The record once it is terminal, or as it stands when ``timeout_s`` runs out."""
        task: Task | None = None
        async for task in self.follow(task_id, timeout_s):
            if task is None or task.terminal:
                break
        return task

    async def follow(
        self, task_id: str, timeout_s: float | None = None
    ) -> AsyncGenerator[Task | None, None]:
        """Yield the record now and after every change, until it ends, vanishes or time is up.

        ``StoreError`` propagates; the caller decides what the client sees.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        delay = _FIRST_POLL_S
        last: tuple[object, ...] | None = None
        task: Task | None = None
        with self._watching(task_id) as waiter:
            while True:
                waiter.event.clear()  # before the read, so a write during it is not missed
                written = waiter.take()
                if written is None:
                    # First look, or woken by time: another instance may have written.
                    task = await self.store.get(task_id)
                elif _later(written, task):
                    task = written
                state = _state(task)
                if state != last:
                    last = state
                    delay = _FIRST_POLL_S
                    yield task
                if task is None or task.terminal or self.closing.is_set():
                    return
                wait = _QUIET_POLL_S if self.local(task) else delay
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                    if wait <= 0:
                        return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter.event.wait(), wait)
                delay = min(delay * 2, _MAX_POLL_S)


def _state(task: Task | None) -> tuple[object, ...] | None:
    return None if task is None else (task.status, task.progress, task.stage, task.updated_at)


def _later(task: Task, than: Task | None) -> bool:
    """Whether ``task`` is a newer state of the record than ``than``.

    A finished job never changes again, so nothing replaces a terminal record.
    """
    if than is None:
        return True
    if than.terminal:
        return False
    return task.terminal or task.updated_at >= than.updated_at
