"""The handler class a plugin subclasses, and what it gets when the app starts.

A handler is a class registered under the entry-point group
``shortdrama_worker.handlers``; the entry-point name is its *kind*. The host
validates the handler's settings section once, instantiates the class once per
application with a ``HandlerEnv``, validates each job's input against
``input_model`` and calls ``run(params, ctx)`` with the validated model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import aiohttp
from pydantic import BaseModel, ConfigDict
from structlog.typing import FilteringBoundLogger

from shortdrama_worker.contract.context import JobContext, PluginMetrics
from shortdrama_worker.contract.values import Health, Provenance, Resource

CONTRACT_VERSION = "1.1"
"""The contract's version. A plugin declares the one it was built for in
``Handler.contract_version``; the host refuses another major version, or a
newer minor one, at start-up. 1.1 added ``Handler.provenance`` and
``store_result(..., provenance=)`` (Content Credentials)."""


class HandlerInput(BaseModel):
    """Base for handler input models: unknown fields are an error, not ignored."""

    model_config = ConfigDict(extra="forbid")


class NoSettings(BaseModel):
    """The settings of a handler that has none: an empty section."""

    model_config = ConfigDict(extra="forbid")


InputT = TypeVar("InputT", bound=BaseModel)
SettingsT = TypeVar("SettingsT", bound=BaseModel)


@dataclass(frozen=True)
class HandlerEnv(Generic[SettingsT]):
    """What a handler gets once, when the application starts."""

    kind: str
    settings: SettingsT
    """``[handlers.options.<kind>]``, validated by the host against ``settings_model``."""
    log: FilteringBoundLogger
    metrics: PluginMetrics
    service_http: aiohttp.ClientSession
    """An HTTP session for the back ends the *operator* configured in this
    handler's settings (a ComfyUI server, a provider's API). It does not guard
    addresses, so it must never fetch a URL that came from a job's input: those
    go through ``JobContext.fetch_image`` / ``fetch_file``."""


class Handler(Generic[InputT, SettingsT]):
    """Base class for handlers: set the class attributes and implement ``run``.

    ``contract_version`` is required: the ``CONTRACT_VERSION`` the plugin was
    built against. ``slug`` defaults to the kind in kebab-case. ``timeout_s``
    bounds one run; a run that exceeds it fails permanently. ``startup``,
    ``shutdown``, ``health`` and ``ready`` are optional hooks.
    """

    contract_version: ClassVar[str]
    slug: ClassVar[str | None] = None
    resource: ClassVar[Resource] = "cpu"
    input_model: ClassVar[type[BaseModel]]
    """The pydantic model of one job's input; ``run`` gets an instance of it."""
    settings_model: ClassVar[type[BaseModel]] = NoSettings
    """Validates ``[handlers.options.<kind>]``; errors stop start-up."""
    timeout_s: ClassVar[float] = 600.0
    description: ClassVar[str] = ""
    provenance: ClassVar[Provenance | None] = None
    """What the handler does to make its result images, as the host records it in
    their signed Content Credentials (C2PA). ``None`` claims no model: an edit of
    the first input image, or ``algorithmicMedia`` when there is none. A handler
    whose model draws pixels declares that here, with its source type."""
    deterministic: ClassVar[bool] = False
    """True when the same input (by content) and settings always give the same
    result, so the host may answer a repeated request with an earlier result
    instead of running again. Clients may ask for that on any kind."""

    def __init__(self, env: HandlerEnv[SettingsT]) -> None:
        self.env = env
        self.settings: SettingsT = env.settings

    async def startup(self) -> None:
        """Open what the handler needs (clients, models). Errors stop start-up."""

    async def shutdown(self) -> None:
        """Release what ``startup`` opened."""

    async def health(self) -> Mapping[str, Health]:
        """Named dependency checks shown on /health."""
        return {}

    def ready(self) -> bool:
        """Whether this handler can take work now (feeds /ready)."""
        return True

    async def run(self, params: InputT, ctx: JobContext) -> dict[str, Any]:
        """Do the job and return its result.

        The result is a JSON-able dict; a ``StoredResult`` may stand anywhere a
        link to a stored file belongs (the host renders a fresh URL on every
        read). Raise ``PermanentJobError`` or ``TransientJobError`` to fail.
        """
        raise NotImplementedError
