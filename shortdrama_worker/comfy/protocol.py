"""Shapes of ComfyUI's answers (v0.8), parsed into small typed values.

Only what the worker acts on is parsed; everything else in a history entry or
a WebSocket event is left alone so that newer ComfyUI versions that add fields
keep working.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

PromptState = Literal["pending", "running", "finished", "unknown"]

# Binary WebSocket frames start with a 4-byte big-endian event type
# (1 preview image, 2 unencoded, 3 text, 4 preview image with metadata).
BINARY_EVENT_NAMES = {1: "preview_image", 2: "unencoded_preview", 3: "text", 4: "preview_metadata"}

TERMINAL_EVENTS = frozenset({"execution_success", "execution_error", "execution_interrupted"})


@dataclass(frozen=True)
class OutputImage:
    """One image a node wrote, as ``GET /view`` wants it addressed."""

    node_id: str
    filename: str
    subfolder: str
    type: str

    def view_params(self) -> dict[str, str]:
        return {"filename": self.filename, "subfolder": self.subfolder, "type": self.type}


@dataclass(frozen=True)
class HistoryOutcome:
    """What ``GET /history/{prompt_id}`` says about a finished prompt."""

    status: Literal["success", "error", "interrupted"]
    images: list[OutputImage]
    error: Mapping[str, Any] | None
    """The ``execution_error`` data when ``status`` is ``error``."""


@dataclass(frozen=True)
class Event:
    """A text WebSocket message: ``{"type": ..., "data": {...}}``."""

    type: str
    data: Mapping[str, Any]

    @property
    def prompt_id(self) -> str | None:
        value = self.data.get("prompt_id")
        return value if isinstance(value, str) else None


def parse_event(payload: Any) -> Event | None:
    """Parse a decoded text frame; ``None`` for anything that is not an event envelope."""
    if not isinstance(payload, Mapping):
        return None
    kind = payload.get("type")
    data = payload.get("data")
    if not isinstance(kind, str):
        return None
    return Event(kind, data if isinstance(data, Mapping) else {})


def binary_event_name(frame: bytes) -> str:
    """Name of a binary frame's event type (for logs only; the worker ignores them)."""
    if len(frame) < 4:
        return "malformed"
    (code,) = struct.unpack(">I", frame[:4])
    return BINARY_EVENT_NAMES.get(code, f"binary_{code}")


def parse_history_entry(entry: Mapping[str, Any]) -> HistoryOutcome:
    """Read the outcome and the saved images (``type == "output"``) of a history entry.

    ``status.status_str`` says success or error; interrupted prompts also end in
    ``error``, told apart by an ``execution_interrupted`` message. Temp images
    (``PreviewImage``) are skipped: they are previews, not results.
    """
    status = entry.get("status")
    messages = status.get("messages") if isinstance(status, Mapping) else None
    error: Mapping[str, Any] | None = None
    interrupted = False
    for message in messages if isinstance(messages, list) else []:
        if not (isinstance(message, list) and len(message) == 2):
            continue
        name, data = message
        if name == "execution_error" and isinstance(data, Mapping):
            error = data
        elif name == "execution_interrupted":
            interrupted = True
    status_str = status.get("status_str") if isinstance(status, Mapping) else None
    outcome: Literal["success", "error", "interrupted"]
    if interrupted:
        outcome = "interrupted"
    elif error is not None or status_str == "error":
        outcome = "error"
    else:
        outcome = "success"
    return HistoryOutcome(outcome, _output_images(entry.get("outputs")), error)


def _output_images(outputs: Any) -> list[OutputImage]:
    images: list[OutputImage] = []
    if not isinstance(outputs, Mapping):
        return images
    for node_id, ui in outputs.items():
        files = ui.get("images") if isinstance(ui, Mapping) else None
        for item in files if isinstance(files, list) else []:
            if not isinstance(item, Mapping) or item.get("type") != "output":
                continue
            filename = item.get("filename")
            if isinstance(filename, str) and filename:
                subfolder = item.get("subfolder")
                images.append(
                    OutputImage(
                        node_id=str(node_id),
                        filename=filename,
                        subfolder=subfolder if isinstance(subfolder, str) else "",
                        type="output",
                    )
                )
    return images


def queue_state(queue: Mapping[str, Any], prompt_id: str) -> PromptState:
    """Where ``prompt_id`` is in a ``GET /queue`` answer (items are 5-lists, id second)."""
    for key, state in (("queue_running", "running"), ("queue_pending", "pending")):
        items = queue.get(key)
        for item in items if isinstance(items, list) else []:
            if isinstance(item, list) and len(item) > 1 and item[1] == prompt_id:
                return "running" if state == "running" else "pending"
    return "unknown"
