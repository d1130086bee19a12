"""ComfyUI integration: async client (HTTP + WebSocket, ComfyUI v0.8) and workflow templates.

Import graph: ``protocol`` and ``errors`` depend on nothing here; ``watch``
follows a prompt using them; ``client`` makes the calls and hands out
``watch.PromptRun``; ``workflows`` is independent of all of them.
"""

from shortdrama_worker.comfy.client import ComfyClient, ComfyClientOptions, UploadedImage
from shortdrama_worker.comfy.errors import (
    ComfyExecutionError,
    ComfyInterruptedError,
    ComfyPromptLostError,
    ComfyRejectedError,
    ComfyUnavailableError,
)
from shortdrama_worker.comfy.protocol import OutputImage
from shortdrama_worker.comfy.watch import Progress, PromptRun

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
