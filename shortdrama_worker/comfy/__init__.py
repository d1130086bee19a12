"""ComfyUI integration: async client (HTTP + WebSocket, ComfyUI v0.8) and workflow templates.

Import graph: ``protocol``, ``errors`` and ``workflows`` depend on nothing
here; ``progress`` reads events; ``watch`` follows a prompt using them;
``client`` makes the calls and hands out ``watch.PromptRun``;
``capabilities`` checks templates against a server; ``pool`` holds the
servers (one per GPU), their slots, health and capabilities.
"""

from shortdrama_worker.comfy.client import ComfyClient, ComfyClientOptions, UploadedImage
from shortdrama_worker.comfy.errors import (
    ComfyExecutionError,
    ComfyInterruptedError,
    ComfyPromptLostError,
    ComfyRejectedError,
    ComfyUnavailableError,
)
from shortdrama_worker.comfy.progress import Progress
from shortdrama_worker.comfy.protocol import OutputImage
from shortdrama_worker.comfy.watch import PromptRun

__all__ = [
    "ComfyClient",
    "ComfyClientOptions",
    "ComfyExecutionError",
    "ComfyInterruptedError",
    "ComfyPromptLostError",
    "ComfyRejectedError",
    "ComfyUnavailableError",
    "OutputImage",
    "Progress",
    "PromptRun",
    "UploadedImage",
]
