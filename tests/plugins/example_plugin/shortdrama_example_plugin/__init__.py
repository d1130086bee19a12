"""An example handler plugin: echoes text back as a stored JSON result.

It shows the whole contract a third-party handler needs: an input model, a
resource class, progress, and a stored result. ``delay_s`` makes it slow
enough to be caught mid-run (shutdown and cancellation tests use it).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from pydantic import Field

from shortdrama_worker.contract import (
    CONTRACT_VERSION,
    Handler,
    HandlerInput,
    JobContext,
    NoSettings,
)


class EchoInput(HandlerInput):
    text: str = Field(min_length=1, max_length=1000, description="Text to echo back.")
    delay_s: float = Field(default=0.0, ge=0, le=120, description="Work to pretend to do.")


class EchoHandler(Handler[Any, NoSettings]):
    contract_version = CONTRACT_VERSION
    resource = "cpu"
    input_model = EchoInput
    timeout_s = 300.0
    description = "Echo text back (example plugin)."

    async def run(self, params: EchoInput, ctx: JobContext) -> dict[str, Any]:
        steps = 10
        for step in range(steps):
            await asyncio.sleep(params.delay_s / steps)
            await ctx.progress(100 * (step + 1) / steps, "echoing")
        body = json.dumps({"echo": params.text}).encode()
        await ctx.store_result(body, content_type="application/json", name="echo.json")
        return {"echo": params.text, "attempt": ctx.attempt}
