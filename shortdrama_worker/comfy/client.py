"""Async client for ComfyUI's HTTP API (protocol as of ComfyUI v0.8).

One ``ComfyClient`` per handler, sharing the application's
``aiohttp.ClientSession``. Every call is timed on the provider metrics
(``provider="comfyui"``) and every failure is translated into the runner's
vocabulary: a refused graph is a ``PermanentJobError`` naming the node; a
refused connection, a 5xx or a timeout is a ``TransientJobError``.

Following a prompt to its end (WebSocket, reconnects, history reconciliation)
lives in :mod:`shortdrama_worker.comfy.watch`; ``ComfyClient.prompt_run`` hands
one out.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from yarl import URL

from shortdrama_worker.comfy.errors import ComfyUnavailableError, rejection_error
from shortdrama_worker.comfy.protocol import OutputImage, PromptState, queue_state
from shortdrama_worker.comfy.watch import PromptRun, WithdrawCallback
from shortdrama_worker.contract.context import PluginMetrics
from shortdrama_worker.contract.errors import PermanentJobError

PROVIDER = "comfyui"
_log = structlog.get_logger("shortdrama_worker.comfy")


@dataclass(frozen=True)
class ComfyClientOptions:
    """Timeouts and the reconnect policy. Defaults suit a ComfyUI on the same host."""

    connect_timeout_s: float = 5.0
    request_timeout_s: float = 30.0
    transfer_timeout_s: float = 120.0
    """Uploads and ``/view`` downloads, which move whole images."""
    health_timeout_s: float = 3.0
    ws_heartbeat_s: float = 20.0
    reconnect_attempts: int = 8
    reconnect_backoff_s: float = 0.25
    reconnect_backoff_max_s: float = 5.0
    poll_interval_s: float = 10.0
    """Reconcile from ``/queue`` and ``/history`` when the socket says nothing this long."""
    fallback_poll_s: float = 1.0
    """Poll period once the socket cannot be reopened at all."""
    history_wait_s: float = 10.0
    """How long a finished prompt may take to appear in ``/history``."""
    cancel_timeout_s: float = 5.0
    interrupt_wait_s: float = 30.0
    """After ``/interrupt``, how long ComfyUI may take to leave the prompt before
    the job says so (the slot is held until it does leave)."""
    interrupt_poll_s: float = 0.25


@dataclass(frozen=True)
class UploadedImage:
    """Where ``POST /upload/image`` put a file."""

    name: str
    subfolder: str
    type: str

    @property
    def load_value(self) -> str:
        """The value a ``LoadImage`` node's ``image`` input needs to read this file."""
        return f"{self.subfolder}/{self.name}" if self.subfolder else self.name


class ComfyClient:
    """HTTP side of ComfyUI: upload, submit, history, queue, view, cancel, health."""

    def __init__(
        self,
        base_url: str,
        http: aiohttp.ClientSession,
        *,
        options: ComfyClientOptions | None = None,
        metrics: PluginMetrics | None = None,
        log: Any = None,
    ) -> None:
        self.base_url = URL(base_url.rstrip("/"))
        self.log: Any = log if log is not None else _log
        """Where this server's log lines go (the handler's logger, bound to its kind)."""
        self.http = http
        self.options = options or ComfyClientOptions()
        self.metrics = metrics
        self._reachable: bool | None = None
        self.last_error: str | None = None
        """Why the last failed call failed (for the down/up log lines)."""
        self.on_reachability: Callable[[bool], None] | None = None
        """Called when ``reachable`` flips, e.g. to log ComfyUI going down or coming back."""

    @property
    def reachable(self) -> bool | None:
        """Outcome of the last call: ``None`` before the first, then whether ComfyUI answered."""
        return self._reachable

    @reachable.setter
    def reachable(self, value: bool | None) -> None:
        changed = value is not None and value != self._reachable
        self._reachable = value
        if changed and self.on_reachability is not None:
            self.on_reachability(bool(value))

    # -- requests -----------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        *,
        timeout_s: float | None = None,
        **kwargs: Any,
    ) -> tuple[int, bytes, str]:
        """Send one request; return status, body and content type, or raise transient."""
        url = self.base_url / path.lstrip("/")
        timeout = aiohttp.ClientTimeout(
            total=timeout_s or self.options.request_timeout_s,
            sock_connect=self.options.connect_timeout_s,
        )
        started = time.monotonic()
        try:
            async with self.http.request(method, url, timeout=timeout, **kwargs) as response:
                body = await response.read()
                status = response.status
                content_type = response.content_type
        except TimeoutError as exc:
            self.last_error = f"timeout on {method} {path}"
            self._failed("timeout", started)
            raise ComfyUnavailableError(f"ComfyUI timed out on {method} {path}") from exc
        except aiohttp.ClientError as exc:
            self.last_error = f"{method} {path}: {exc}"
            self._failed("connection", started)
            raise ComfyUnavailableError(
                f"ComfyUI unreachable at {self.base_url} ({method} {path}): {exc}"
            ) from exc
        status_class = f"{status // 100}xx"
        self._observe(status_class, started, failed=status >= 400)
        if status >= 500:
            self.last_error = f"{status} on {method} {path}"
            self.reachable = False
            raise ComfyUnavailableError(
                f"ComfyUI answered {status} on {method} {path}: {body[:300]!r}",
                retry_after=None,
            )
        self.reachable = True
        return status, body, content_type

    async def _json(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        status, body, _ = await self._call(method, path, **kwargs)
        if not body:
            return status, None
        try:
            return status, json.loads(body)
        except ValueError as exc:
            raise ComfyUnavailableError(
                f"ComfyUI sent a non-JSON answer ({status}) to {method} {path}"
            ) from exc

    def record(self, status_class: str, started: float, *, failed: bool = False) -> None:
        """Time a call on the provider metrics (also used for WebSocket connects)."""
        if failed:
            self._failed(status_class, started)
        else:
            self._observe(status_class, started)

    def _observe(self, status_class: str, started: float, *, failed: bool = False) -> None:
        if self.metrics is not None:
            self.metrics.observe_provider_call(
                PROVIDER, status_class, time.monotonic() - started, failed=failed
            )

    def _failed(self, status_class: str, started: float) -> None:
        self.reachable = False
        self._observe(status_class, started, failed=True)

    @staticmethod
    def _client_error(status: int, path: str, body: Any) -> PermanentJobError:
        return PermanentJobError(f"ComfyUI answered {status} on {path}: {str(body)[:300]}")

    # -- API ----------------------------------------------------------------------

    async def upload_image(
        self,
        data: bytes,
        filename: str,
        *,
        subfolder: str = "",
        overwrite: bool = True,
        content_type: str = "image/png",
    ) -> UploadedImage:
        """``POST /upload/image`` into ComfyUI's input directory.

        ``overwrite`` keeps the name stable, so a retried job reuses its own file
        instead of piling up ``name (1).png`` copies.
        """
        form = aiohttp.FormData()
        form.add_field("image", data, filename=filename, content_type=content_type)
        form.add_field("type", "input")
        form.add_field("subfolder", subfolder)
        form.add_field("overwrite", "true" if overwrite else "false")
        status, body = await self._json(
            "POST", "/upload/image", data=form, timeout_s=self.options.transfer_timeout_s
        )
        if status != 200 or not isinstance(body, Mapping) or "name" not in body:
            raise self._client_error(status, "/upload/image", body)
        return UploadedImage(
            name=str(body["name"]),
            subfolder=str(body.get("subfolder") or ""),
            type=str(body.get("type") or "input"),
        )

    async def submit(self, graph: Mapping[str, Any], *, prompt_id: str, client_id: str) -> str:
        """``POST /prompt``; return the prompt id ComfyUI will report events under.

        A 200 that still lists ``node_errors`` means ComfyUI queued only the outputs
        that validated; the job would come back incomplete, so the prompt is
        withdrawn and the job fails naming the bad nodes.
        """
        payload = {"prompt": graph, "client_id": client_id, "prompt_id": prompt_id}
        status, body = await self._json("POST", "/prompt", json=payload)
        if status == 400:
            raise rejection_error(body, graph)
        if status != 200 or not isinstance(body, Mapping):
            raise self._client_error(status, "/prompt", body)
        # ComfyUI before client-chosen ids minted its own; follow whichever it used.
        queued_id = str(body.get("prompt_id") or prompt_id)
        if body.get("node_errors"):
            await self.cancel_quietly(queued_id)
            raise rejection_error(body, graph)
        return queued_id

    async def history(self, prompt_id: str) -> Mapping[str, Any] | None:
        """The history entry of a finished prompt; ``None`` while pending, running or unknown."""
        status, body = await self._json("GET", f"/history/{prompt_id}")
        if status != 200:
            raise self._client_error(status, "/history", body)
        entry = body.get(prompt_id) if isinstance(body, Mapping) else None
        return entry if isinstance(entry, Mapping) else None

    async def queue(self) -> Mapping[str, Any]:
        """``GET /queue``: running and pending items."""
        status, body = await self._json("GET", "/queue")
        if status != 200 or not isinstance(body, Mapping):
            raise self._client_error(status, "/queue", body)
        return body

    async def prompt_state(self, prompt_id: str) -> tuple[PromptState, Mapping[str, Any] | None]:
        """Where a prompt stands, from ``/queue`` and ``/history``.

        The queue is read first: ComfyUI moves a prompt from "running" to history
        in one step under its queue lock, so a prompt absent from the queue and
        then absent from history really is gone, while the other order could
        miss one that finished between the two reads.
        """
        state = queue_state(await self.queue(), prompt_id)
        if state != "unknown":
            return state, None
        entry = await self.history(prompt_id)
        return ("finished", entry) if entry is not None else ("unknown", None)

    async def view(self, image: OutputImage) -> tuple[bytes, str]:
        """Download one output through ``GET /view``; returns bytes and content type."""
        status, body, content_type = await self._call(
            "GET",
            "/view",
            params=image.view_params(),
            timeout_s=self.options.transfer_timeout_s,
        )
        if status != 200:
            raise PermanentJobError(
                f"ComfyUI has no output {image.subfolder}/{image.filename} ({status})"
            )
        return body, content_type or "application/octet-stream"

    async def cancel(self, prompt_id: str) -> None:
        """Take a prompt off the queue if pending, and interrupt it if running.

        The queue delete goes first so that a prompt about to start cannot slip
        between the two calls. ``/interrupt`` with a ``prompt_id`` only stops that
        prompt (a no-op if another one is running), so other jobs are safe.
        """
        await self._json("POST", "/queue", json={"delete": [prompt_id]})
        await self._json("POST", "/interrupt", json={"prompt_id": prompt_id})
        # Every interrupt is logged: an operator who sees a prompt stop in
        # ComfyUI's own log can tell it was us, and which job it was.
        self.log.info("comfyui_interrupt_sent", prompt_id=prompt_id, base_url=str(self.base_url))

    async def cancel_quietly(self, prompt_id: str) -> bool:
        """``cancel`` that never raises and is bounded in time; returns whether it went through."""
        try:
            async with asyncio.timeout(self.options.cancel_timeout_s):
                await self.cancel(prompt_id)
        except (ComfyUnavailableError, PermanentJobError, TimeoutError):
            return False
        return True

    async def system_stats(self) -> Mapping[str, Any]:
        """``GET /system_stats``: versions, RAM and per-device VRAM."""
        status, body = await self._json(
            "GET", "/system_stats", timeout_s=self.options.health_timeout_s
        )
        if status != 200 or not isinstance(body, Mapping):
            raise self._client_error(status, "/system_stats", body)
        return body

    async def object_info(self) -> Mapping[str, Any]:
        """``GET /object_info``: every node type the server has, with its inputs."""
        status, body = await self._json("GET", "/object_info")
        if status != 200 or not isinstance(body, Mapping):
            raise self._client_error(status, "/object_info", body)
        return body

    async def models(self, folder: str) -> list[str] | None:
        """``GET /models/{folder}``: file names in a model folder; ``None`` if no such folder."""
        status, body = await self._json("GET", f"/models/{folder}")
        if status == 404:
            return None
        if status != 200 or not isinstance(body, list):
            raise self._client_error(status, f"/models/{folder}", body)
        return [str(name) for name in body]

    async def healthy(self) -> bool:
        """Whether ``/system_stats`` answers sensibly right now."""
        try:
            stats = await self.system_stats()
        except (ComfyUnavailableError, PermanentJobError):
            self.reachable = False
            return False
        return "system" in stats

    def ws_url(self, client_id: str) -> URL:
        scheme = "wss" if self.base_url.scheme == "https" else "ws"
        return (self.base_url / "ws").with_scheme(scheme).with_query(clientId=client_id)

    def prompt_run(
        self,
        graph: Mapping[str, Any],
        *,
        prompt_id: str | None = None,
        on_withdraw: WithdrawCallback | None = None,
    ) -> PromptRun:
        """A run of ``graph`` under a fresh client id; see :class:`PromptRun`."""
        return PromptRun(
            self, graph, prompt_id=prompt_id or str(uuid.uuid4()), on_withdraw=on_withdraw
        )
