"""A small client for ComfyUI's HTTP and WebSocket API (protocol as of ComfyUI v0.8).

What the plugin needs and no more: ``POST /upload/image``, ``POST /prompt``,
completion through the ``/ws`` events with ``GET /history/{id}`` (and
``GET /queue``) as the fallback when the socket is silent or gone,
``GET /view``, and ``POST /queue`` delete + ``POST /interrupt`` on cancel.

Failures are said in the runner's words: a graph ComfyUI refuses or a node
that raises is a ``PermanentJobError`` naming the node; ComfyUI down, 5xx,
slow, out of GPU memory or having lost the prompt is a ``TransientJobError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from shortdrama_worker.contract import (
    JobError,
    PermanentJobError,
    PluginMetrics,
    TransientJobError,
)
from yarl import URL

PROVIDER = "comfyui"
# Execution errors a retry may clear: the GPU was full, not the graph wrong.
_TRANSIENT_EXCEPTIONS = ("OutOfMemoryError", "CUDA out of memory", "CUBLAS_STATUS_ALLOC")
HISTORY_WAIT_S = 10.0
"""How long a finished prompt may take to appear in ``/history``."""
CANCEL_TIMEOUT_S = 5.0

OnProgress = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class OutputImage:
    """One file a ``SaveImage`` node wrote."""

    node_id: str
    filename: str
    subfolder: str
    type: str


class ComfyClient:
    """One per handler, on the application's ``service_http`` session."""

    def __init__(
        self,
        base_url: str,
        http: aiohttp.ClientSession,
        *,
        request_timeout_s: float = 30.0,
        transfer_timeout_s: float = 120.0,
        poll_interval_s: float = 5.0,
        metrics: PluginMetrics | None = None,
    ) -> None:
        self.base_url = URL(base_url.rstrip("/"))
        self.http = http
        self.request_timeout_s = request_timeout_s
        self.transfer_timeout_s = transfer_timeout_s
        self.poll_interval_s = poll_interval_s
        self.metrics = metrics

    # -- HTTP ---------------------------------------------------------------------

    async def _request(
        self, method: str, path: str, *, timeout_s: float | None = None, **kwargs: Any
    ) -> tuple[int, bytes, str]:
        timeout = aiohttp.ClientTimeout(total=timeout_s or self.request_timeout_s)
        started = time.monotonic()
        try:
            async with self.http.request(
                method, self.base_url / path.lstrip("/"), timeout=timeout, **kwargs
            ) as response:
                body = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._observe("connection", started, failed=True)
            raise TransientJobError(
                f"ComfyUI at {self.base_url} did not answer {method} {path}: {exc!r}",
                code="comfyui_unavailable",
            ) from exc
        self._observe(f"{response.status // 100}xx", started, failed=response.status >= 400)
        if response.status >= 500:
            raise TransientJobError(
                f"ComfyUI answered {response.status} to {method} {path}: {body[:300]!r}",
                code="comfyui_unavailable",
            )
        return response.status, body, response.content_type

    async def _json(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        status, body, _ = await self._request(method, path, **kwargs)
        try:
            return status, json.loads(body) if body else None
        except ValueError:
            raise TransientJobError(
                f"ComfyUI sent a non-JSON answer ({status}) to {method} {path}",
                code="comfyui_unavailable",
            ) from None

    def _observe(self, status_class: str, started: float, *, failed: bool) -> None:
        if self.metrics is not None:
            self.metrics.observe_provider_call(
                PROVIDER, status_class, time.monotonic() - started, failed=failed
            )

    async def upload(self, data: bytes, filename: str, *, subfolder: str) -> str:
        """Put a PNG in ComfyUI's input directory; the value a ``LoadImage`` needs.

        ``overwrite`` keeps the name stable, so a retried job reuses its file.
        """
        form = aiohttp.FormData()
        form.add_field("image", data, filename=filename, content_type="image/png")
        form.add_field("type", "input")
        form.add_field("subfolder", subfolder)
        form.add_field("overwrite", "true")
        status, body = await self._json(
            "POST", "/upload/image", data=form, timeout_s=self.transfer_timeout_s
        )
        if status != 200 or not isinstance(body, Mapping) or "name" not in body:
            raise PermanentJobError(f"ComfyUI refused the upload ({status}): {str(body)[:300]}")
        folder = str(body.get("subfolder") or "")
        return f"{folder}/{body['name']}" if folder else str(body["name"])

    async def submit(self, graph: Mapping[str, Any], *, prompt_id: str, client_id: str) -> None:
        """``POST /prompt``. A 200 that lists node errors ran only part of the graph: withdrawn."""
        payload = {"prompt": graph, "client_id": client_id, "prompt_id": prompt_id}
        status, body = await self._json("POST", "/prompt", json=payload)
        if status == 200 and isinstance(body, Mapping) and not body.get("node_errors"):
            return
        if status == 200:
            await self.cancel(prompt_id)
        raise rejection(body, graph, status)

    async def history(self, prompt_id: str) -> Mapping[str, Any] | None:
        """The finished prompt's entry; ``None`` while it is queued, running or unknown."""
        status, body = await self._json("GET", f"/history/{prompt_id}")
        entry = body.get(prompt_id) if status == 200 and isinstance(body, Mapping) else None
        return entry if isinstance(entry, Mapping) else None

    async def queued(self, prompt_id: str) -> bool:
        """Whether the prompt is running or pending."""
        _, body = await self._json("GET", "/queue")
        items = [*body.get("queue_running", []), *body.get("queue_pending", [])]
        return any(isinstance(i, list) and len(i) > 1 and i[1] == prompt_id for i in items)

    async def view(self, image: OutputImage) -> bytes:
        params = {"filename": image.filename, "subfolder": image.subfolder, "type": image.type}
        status, body, _ = await self._request(
            "GET", "/view", params=params, timeout_s=self.transfer_timeout_s
        )
        if status != 200:
            raise PermanentJobError(f"ComfyUI has no output {image.filename} ({status})")
        return body

    async def cancel(self, prompt_id: str) -> None:
        """Take the prompt off the queue, then stop it if it runs; never raises.

        The delete goes first, so a prompt about to start cannot slip between
        the two. ``/interrupt`` with a ``prompt_id`` leaves other prompts alone.
        """
        with contextlib.suppress(JobError, TimeoutError):
            async with asyncio.timeout(CANCEL_TIMEOUT_S):
                await self._request("POST", "/queue", json={"delete": [prompt_id]})
                await self._request("POST", "/interrupt", json={"prompt_id": prompt_id})

    async def healthy(self) -> bool:
        try:
            status, body = await self._json("GET", "/system_stats", timeout_s=3.0)
        except JobError:
            return False
        return status == 200 and isinstance(body, Mapping) and "system" in body

    # -- following a prompt ---------------------------------------------------------

    async def connect(self, client_id: str) -> aiohttp.ClientWebSocketResponse | None:
        """The event socket for ``client_id``, opened before submitting so no event is missed.

        ``None`` if it cannot be opened: the prompt is then followed by polling.
        """
        scheme = "wss" if self.base_url.scheme == "https" else "ws"
        url = (self.base_url / "ws").with_scheme(scheme).with_query(clientId=client_id)
        try:
            return await self.http.ws_connect(
                url, heartbeat=20.0, timeout=aiohttp.ClientWSTimeout(ws_close=5.0)
            )
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def wait(
        self,
        prompt_id: str,
        graph: Mapping[str, Any],
        ws: aiohttp.ClientWebSocketResponse | None,
        on_progress: OnProgress,
        *,
        client_id: str,
    ) -> list[OutputImage]:
        """Until the prompt ends: its output images, or the error it ended with.

        A socket that drops is reopened under the same client id (ComfyUI then
        targets the remaining events to it); while it cannot be, the queue and
        history are polled each interval, so a lost socket costs progress
        reports, not the job.
        """
        while True:
            finished = False
            if ws is None or ws.closed:
                ws = await self.connect(client_id)
            if ws is not None and not ws.closed:
                try:
                    message = await asyncio.wait_for(ws.receive(), self.poll_interval_s)
                except TimeoutError:
                    message = None  # silent: reconcile from the queue and history below
                if message is not None and message.type == aiohttp.WSMsgType.TEXT:
                    finished = await self._event(message.data, prompt_id, graph, on_progress)
                    if not finished:
                        continue
                elif message is not None and message.type == aiohttp.WSMsgType.BINARY:
                    continue  # previews
            else:
                await asyncio.sleep(self.poll_interval_s)
            entry = await self._finished_entry(prompt_id, wait=finished)
            if entry is not None:
                if ws is not None:
                    await ws.close()
                return outputs_of(entry, prompt_id, graph)

    async def _event(
        self, raw: str, prompt_id: str, graph: Mapping[str, Any], on_progress: OnProgress
    ) -> bool:
        """Act on one event; whether it says the prompt has finished."""
        try:
            event = json.loads(raw)
        except ValueError:
            return False
        kind, data = event.get("type"), event.get("data")
        if not isinstance(data, Mapping) or data.get("prompt_id") != prompt_id:
            return False
        if kind == "progress" and isinstance(data.get("max"), int | float) and data["max"] > 0:
            await on_progress(min(1.0, float(data.get("value", 0)) / float(data["max"])))
        elif kind == "execution_error":
            raise execution_error(data, graph)
        elif kind == "execution_interrupted":
            raise interrupted()
        return kind == "execution_success" or (kind == "executing" and data.get("node") is None)

    async def _finished_entry(self, prompt_id: str, *, wait: bool) -> Mapping[str, Any] | None:
        """The history entry if the prompt is done; raise if ComfyUI lost it.

        The queue is read before the history: ComfyUI moves a prompt from the
        queue to the history under one lock, so absent from both really is gone.
        """
        deadline = time.monotonic() + (HISTORY_WAIT_S if wait else 0.0)
        while True:
            queued = await self.queued(prompt_id)
            entry = await self.history(prompt_id)
            if entry is not None or queued:
                return entry
            if time.monotonic() >= deadline:
                raise TransientJobError(
                    f"ComfyUI no longer knows prompt {prompt_id} (restarted or queue cleared)",
                    code="comfyui_prompt_lost",
                )
            await asyncio.sleep(0.1)


def outputs_of(
    entry: Mapping[str, Any], prompt_id: str, graph: Mapping[str, Any]
) -> list[OutputImage]:
    """The saved images of a history entry, or the error it records."""
    status = entry.get("status")
    messages = status.get("messages") if isinstance(status, Mapping) else None
    for name, data in messages or []:
        if name == "execution_error" and isinstance(data, Mapping):
            raise execution_error(data, graph)
        if name == "execution_interrupted":
            raise interrupted()
    images = [
        OutputImage(str(node_id), str(i["filename"]), str(i.get("subfolder", "")), str(i["type"]))
        for node_id, ui in (entry.get("outputs") or {}).items()
        for i in (ui.get("images") or [])
        if isinstance(i, Mapping) and i.get("type") == "output"
    ]
    if not images:
        raise PermanentJobError(f"ComfyUI finished prompt {prompt_id} without saving an image")
    return images


def describe(node_id: str, graph: Mapping[str, Any], class_type: str | None = None) -> str:
    """``node 13 KSampler "Sampler $seed"``: what an operator searches for in the editor."""
    node = graph.get(node_id)
    node = node if isinstance(node, Mapping) else {}
    title = (node.get("_meta") or {}).get("title")
    parts = [f"node {node_id}", class_type or str(node.get("class_type") or "")]
    return " ".join(p for p in [*parts, f'"{title}"' if title else ""] if p)


def rejection(body: Any, graph: Mapping[str, Any], status: int) -> PermanentJobError:
    """The error for a graph ``POST /prompt`` refused, naming each bad node."""
    problems = []
    node_errors = body.get("node_errors") if isinstance(body, Mapping) else None
    for node_id, info in (node_errors or {}).items() if isinstance(node_errors, Mapping) else ():
        details = "; ".join(
            f"{e.get('message')}: {e.get('details')}" for e in info.get("errors", [])
        )
        problems.append(f"{describe(str(node_id), graph, info.get('class_type'))}: {details}")
    error = body.get("error") if isinstance(body, Mapping) else body
    if not problems and isinstance(error, Mapping):
        problems.append(f"{error.get('message')}: {error.get('details')}")
    elif not problems:
        problems.append(str(error)[:300])
    return PermanentJobError(
        f"ComfyUI rejected the workflow ({status}): " + " | ".join(problems),
        code="comfyui_rejected",
    )


def execution_error(data: Mapping[str, Any], graph: Mapping[str, Any]) -> JobError:
    label = describe(str(data.get("node_id")), graph, data.get("node_type"))
    kind = str(data.get("exception_type") or "Exception")
    text = str(data.get("exception_message") or "").strip()
    message = f"ComfyUI failed at {label}: {kind}: {text}"[:2000]
    if any(marker in kind or marker in text for marker in _TRANSIENT_EXCEPTIONS):
        return TransientJobError(message, code="comfyui_out_of_memory")
    return PermanentJobError(message, code="comfyui_execution_error")


def interrupted() -> TransientJobError:
    return TransientJobError(
        "the prompt was interrupted in ComfyUI by someone else", code="comfyui_interrupted"
    )
