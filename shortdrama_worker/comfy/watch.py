"""Following one prompt to its end without ever missing the end.

The WebSocket is the fast path: ``progress`` feeds the job's progress and
``executing`` with ``node: null`` (or ``execution_success``/``_error``/
``_interrupted``) says the prompt is done. The socket is not trusted alone,
because completion events do get lost in practice (see the reference notes):

* when it drops, it is reopened with bounded exponential backoff, and each
  reopening is followed by a look at ``/queue`` and ``/history/{id}``, so a
  prompt that finished while the socket was down is seen at once;
* when it stays silent about our prompt for ``poll_interval_s``, the same
  look is taken as a slow safety net;
* if it cannot be reopened at all, the run carries on by polling
  ``fallback_poll_s``; only when HTTP is down too does the job fail (transient).

Each run opens its own socket under a fresh ``clientId``: ComfyUI keeps one
socket per client id, so two concurrent jobs sharing one id would steal each
other's events.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

import aiohttp

from shortdrama_worker.comfy.errors import (
    ComfyInterruptedError,
    ComfyPromptLostError,
    ComfyRejectedError,
    ComfyUnavailableError,
    execution_error,
)
from shortdrama_worker.comfy.progress import NodeProgress, Progress
from shortdrama_worker.comfy.protocol import (
    TERMINAL_EVENTS,
    Event,
    OutputImage,
    parse_event,
    parse_history_entry,
)
from shortdrama_worker.contract.errors import PermanentJobError

if TYPE_CHECKING:
    from shortdrama_worker.comfy.client import ComfyClient

# Once a terminal event was seen, ``executing {node: null}`` follows within
# milliseconds; if it does not, look at history this soon rather than after
# a full poll interval, because the GPU slot is held until then.
_AFTER_TERMINAL_POLL_S = 0.25
_MAX_MSG_BYTES = 64 * 1024 * 1024


ProgressCallback = Callable[[Progress], Awaitable[None]]
WithdrawCallback = Callable[[str], Awaitable[None]]
"""Told how a withdrawal went: ``honoured``, ``stuck``, then ``late``, or ``lost``."""


@dataclass
class _Watch:
    """What following one prompt remembers between WebSocket messages."""

    tracker: NodeProgress
    last_heard: float
    """When we last heard about our prompt (a message, or an HTTP answer)."""
    failures: int = 0
    """Connect failures and sockets that closed before telling us anything, since
    we last heard about our prompt; bounded by ``reconnect_attempts``."""
    next_connect: float = 0.0
    terminal_seen: bool = False


class PromptRun:
    """One prompt from submission to its outputs.

    ::

        async with client.prompt_run(graph) as run:  # opens the socket
            await run.submit()
            images = await run.wait(on_progress)

    Leaving the block with an exception (``CancelledError`` included) while
    the prompt is queued or running withdraws it from ComfyUI — queue delete
    plus ``/interrupt`` for this prompt id — shielded from the cancellation,
    and then waits until ComfyUI has really left the prompt: a node that never
    checks for interrupts keeps the GPU busy, and the slot must say so. Past
    ``interrupt_wait_s`` the wait goes on, but ``on_withdraw("stuck")`` lets
    the job show it; ``withdrawal`` is the waiting task, for a caller whose
    own wait is cut short (shutdown) to keep its slot until it ends.
    """

    def __init__(
        self,
        client: ComfyClient,
        graph: Mapping[str, Any],
        *,
        prompt_id: str,
        on_withdraw: WithdrawCallback | None = None,
    ) -> None:
        self.client = client
        self.on_withdraw = on_withdraw
        self.withdrawal: asyncio.Task[None] | None = None
        self.graph = graph
        self.prompt_id = prompt_id
        self.client_id = uuid.uuid4().hex
        self.submitted_at: float | None = None
        self.started_at: float | None = None
        """When ComfyUI began executing (``execution_start``), monotonic clock."""
        self.finished_at: float | None = None
        self.reconnects = 0
        self.polls = 0
        self.cancel_sent = False
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._maybe_queued = False
        self._finished = False

    async def __aenter__(self) -> PromptRun:
        await self._connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc is not None and self._maybe_queued and not self._finished:
                # Shielded: the task may be mid-cancellation, and an interrupt that
                # never reaches ComfyUI leaves the GPU working for nobody.
                self.withdrawal = asyncio.ensure_future(self._withdraw())
                await asyncio.shield(self.withdrawal)
        finally:
            await self._close()

    async def _withdraw(self) -> None:
        """Interrupt the prompt, then wait until ComfyUI has left it."""
        self.cancel_sent = await self.client.cancel_quietly(self.prompt_id)
        options = self.client.options
        started = time.monotonic()
        outcome = await self._left(options.interrupt_wait_s)
        if outcome is None:
            self.client.log.warning(
                "comfyui_interrupt_not_honoured",
                prompt_id=self.prompt_id,
                base_url=str(self.client.base_url),
                waited_s=round(time.monotonic() - started, 1),
                hint="a node that does not check for interrupts; the slot stays held",
            )
            await self._tell("stuck")
            outcome = await self._left(None)
            outcome = "late" if outcome == "left" else outcome
            self.client.log.info(
                "comfyui_prompt_left",
                prompt_id=self.prompt_id,
                base_url=str(self.client.base_url),
                after_s=round(time.monotonic() - started, 1),
                outcome=outcome,
            )
        await self._tell("honoured" if outcome == "left" else str(outcome))

    async def _left(self, within_s: float | None) -> str | None:
        """``left`` once the prompt is neither queued nor running, ``lost`` if the
        server stopped answering (a dead ComfyUI runs nothing), ``None`` on time-out."""
        deadline = None if within_s is None else time.monotonic() + within_s
        while True:
            try:
                state, _ = await self.client.prompt_state(self.prompt_id)
            except (ComfyUnavailableError, PermanentJobError):
                return "lost"
            if state in ("finished", "unknown"):
                return "left"
            if deadline is not None and time.monotonic() >= deadline:
                return None
            await asyncio.sleep(self.client.options.interrupt_poll_s)

    async def _tell(self, outcome: str) -> None:
        if self.on_withdraw is not None:
            try:
                await self.on_withdraw(outcome)
            except Exception:  # reporting must not keep the slot from being released
                self.client.log.exception("comfyui_withdraw_report_failed", outcome=outcome)

    async def submit(self) -> None:
        """``POST /prompt`` with this run's client id and prompt id."""
        # From here on the prompt may be queued even if the answer never reaches
        # us (cancelled mid-request); the id is ours, so withdrawing it is safe.
        self._maybe_queued = True
        try:
            self.prompt_id = await self.client.submit(
                self.graph, prompt_id=self.prompt_id, client_id=self.client_id
            )
        except ComfyRejectedError:
            self._maybe_queued = False  # refused, or already withdrawn by submit()
            raise
        self.submitted_at = time.monotonic()

    async def wait(self, on_progress: ProgressCallback | None = None) -> list[OutputImage]:
        """Follow the prompt until it ends; return its saved images.

        Raises ``ComfyExecutionError`` (a node failed), ``ComfyInterruptedError``
        (someone else interrupted it), ``ComfyPromptLostError`` (ComfyUI forgot
        it) or ``ComfyUnavailableError`` (neither socket nor HTTP answers).
        """
        if self.submitted_at is None:
            raise RuntimeError("submit() first")
        watch = _Watch(tracker=NodeProgress(self.graph), last_heard=time.monotonic())
        while True:
            if self._ws is None:
                entry = await self._while_disconnected(watch)
            else:
                entry = await self._next_message(watch, on_progress)
            if entry is not None:
                return self._finish(entry)

    async def _while_disconnected(self, watch: _Watch) -> Mapping[str, Any] | None:
        """Reconnect (with backoff), then ask HTTP what happened meanwhile."""
        options = self.client.options
        if watch.failures < options.reconnect_attempts:
            now = time.monotonic()
            if now < watch.next_connect:
                await asyncio.sleep(watch.next_connect - now)
                return None
            try:
                await self._connect()
            except ComfyUnavailableError:
                watch.failures += 1
                watch.next_connect = time.monotonic() + self._backoff(watch.failures)
                if watch.failures < options.reconnect_attempts:
                    return None
                # Out of attempts: HTTP decides whether to go on by polling.
            else:
                self.reconnects += 1
        else:
            await asyncio.sleep(options.fallback_poll_s)
        # Whatever happened while the socket was down, history knows.
        entry = await self._reconcile()
        watch.last_heard = time.monotonic()
        return entry

    async def _next_message(
        self, watch: _Watch, on_progress: ProgressCallback | None
    ) -> Mapping[str, Any] | None:
        """One WebSocket message (or a quiet spell): the history entry once finished."""
        assert self._ws is not None
        quiet_for = (
            _AFTER_TERMINAL_POLL_S if watch.terminal_seen else self.client.options.poll_interval_s
        )
        try:
            wait_s = max(0.0, watch.last_heard + quiet_for - time.monotonic())
            message = await self._ws.receive(timeout=wait_s)
        except TimeoutError:
            entry = await self._reconcile()
            watch.last_heard = time.monotonic()
            return entry
        if message.type is aiohttp.WSMsgType.BINARY:
            return None  # preview frames: not results, and not about completion
        if message.type is not aiohttp.WSMsgType.TEXT:
            # CLOSE, CLOSED, ERROR: reopen at once the first time, then back off
            # so that a socket that keeps closing cannot spin.
            await self._close()
            watch.failures += 1
            backoff = self._backoff(watch.failures - 1) if watch.failures > 1 else 0.0
            watch.next_connect = time.monotonic() + backoff
            return None
        event = _decode(message.data)
        if event is None or event.prompt_id != self.prompt_id:
            return None
        watch.last_heard = time.monotonic()
        watch.failures = 0
        return await self._on_event(event, watch, on_progress)

    async def _on_event(
        self, event: Event, watch: _Watch, on_progress: ProgressCallback | None
    ) -> Mapping[str, Any] | None:
        if event.type == "executing" and event.data.get("node") is None:
            entry = await self._history_after_end()
            watch.terminal_seen = entry is None
            return entry
        if event.type in TERMINAL_EVENTS:
            watch.terminal_seen = True
            return None
        if event.type != "execution_cached" and self.started_at is None:
            self.started_at = time.monotonic()
        update = watch.tracker.feed(event)
        if update is not None and on_progress is not None:
            await on_progress(update)
        return None

    def _backoff(self, failures: int) -> float:
        options = self.client.options
        return float(
            min(options.reconnect_backoff_s * 2 ** (failures - 1), options.reconnect_backoff_max_s)
        )

    async def _reconcile(self) -> Mapping[str, Any] | None:
        """Ask ``/queue`` and ``/history`` where the prompt is; its entry if finished."""
        self.polls += 1
        state, entry = await self.client.prompt_state(self.prompt_id)
        if state == "unknown":
            raise ComfyPromptLostError(
                f"ComfyUI lost prompt {self.prompt_id} (restarted or queue cleared)"
            )
        if state == "running" and self.started_at is None:
            self.started_at = time.monotonic()
        return entry

    async def _history_after_end(self) -> Mapping[str, Any] | None:
        """History of a prompt ComfyUI just reported finished (written right before)."""
        deadline = time.monotonic() + self.client.options.history_wait_s
        delay = 0.02
        while True:
            entry = await self.client.history(self.prompt_id)
            if entry is not None or time.monotonic() >= deadline:
                return entry
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _finish(self, entry: Mapping[str, Any]) -> list[OutputImage]:
        self._finished = True
        self.finished_at = time.monotonic()
        if self.started_at is None:
            self.started_at = self.submitted_at
        outcome = parse_history_entry(entry)
        if outcome.status == "interrupted":
            raise ComfyInterruptedError(f"prompt {self.prompt_id} was interrupted in ComfyUI")
        if outcome.status == "error":
            raise execution_error(outcome.error or {}, self.graph)
        if not outcome.images:
            raise PermanentJobError(
                "the workflow finished without saving an image (no SaveImage output)"
            )
        return outcome.images

    async def _connect(self) -> None:
        started = time.monotonic()
        url = self.client.ws_url(self.client_id)
        try:
            async with asyncio.timeout(self.client.options.connect_timeout_s):
                self._ws = await self.client.http.ws_connect(
                    url,
                    heartbeat=self.client.options.ws_heartbeat_s,
                    max_msg_size=_MAX_MSG_BYTES,
                )
        except TimeoutError as exc:
            self.client.record("timeout", started, failed=True)
            raise ComfyUnavailableError(f"ComfyUI WebSocket {url} timed out") from exc
        except aiohttp.ClientError as exc:
            self.client.record("connection", started, failed=True)
            raise ComfyUnavailableError(f"ComfyUI WebSocket {url} unreachable: {exc}") from exc
        self.client.record("1xx", started)

    async def _close(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None and not ws.closed:
            await ws.close()


def _decode(data: str) -> Event | None:
    try:
        return parse_event(json.loads(data))
    except ValueError:
        return None
