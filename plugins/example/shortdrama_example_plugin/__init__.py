"""An example handler plugin: echoes text back as a stored JSON result.

It shows the whole contract a third-party handler needs — an input model, a
settings section validated by the host, a resource class, progress, a stored
result linked from the result dict — and imports nothing but the contract.
``delay_s`` makes it slow enough to be caught mid-run (the host's shutdown
and cancellation tests use it).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from shortdrama_worker.contract import CONTRACT_VERSION, Handler, HandlerInput, JobContext


class EchoInput(HandlerInput):
    text: str = Field(min_length=1, max_length=1000, description="Text to echo back.")
    delay_s: float = Field(default=0.0, ge=0, le=120, description="Work to pretend to do.")


class EchoSettings(BaseModel):
    """``[handlers.options.example_echo]``."""

    model_config = ConfigDict(extra="forbid")
    prefix: str = Field(default="", max_length=20, description="Put before every echo.")


class EchoHandler(Handler[EchoInput, EchoSettings]):
    contract_version = CONTRACT_VERSION
    resource = "cpu"
    input_model = EchoInput
    settings_model = EchoSettings
    timeout_s = 300.0
    description = "Echo text back (example plugin)."

    async def run(self, params: EchoInput, ctx: JobContext) -> dict[str, Any]:
        steps = 10
        for step in range(steps):
            await asyncio.sleep(params.delay_s / steps)
            await ctx.progress(100 * (step + 1) / steps, "echoing")
        echo = self.settings.prefix + params.text
        body = json.dumps({"echo": echo}).encode()
        stored = await ctx.store_result(body, content_type="application/json", name="echo.json")
        return {"echo": echo, "attempt": ctx.attempt, "echo_url": stored}
