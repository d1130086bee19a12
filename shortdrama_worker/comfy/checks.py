"""One handler's view of its servers: what each lacks for its templates.

Recomputed only when a server's capabilities or the handler's templates
change, so ``ready()`` stays cheap enough for the consumer to ask before
every receive. A change is logged once (``comfyui_cannot_run`` naming the
missing files, ``comfyui_can_run`` once they are there) and exported as
``shortdrama_comfyui_missing_requirements{server, kind}``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog

from shortdrama_worker.comfy.capabilities import Missing, missing, model_folders, summary
from shortdrama_worker.comfy.pool import ComfyServer
from shortdrama_worker.comfy.workflows import Workflow

_log = structlog.get_logger("shortdrama_worker.comfy")


class ServerChecks:
    """What each server lacks for the templates ``templates()`` returns, by template name."""

    def __init__(
        self,
        kind: str,
        templates: Callable[[], Mapping[str, Workflow]],
        metrics: Any,
        log: Any = None,
    ) -> None:
        self.kind = kind
        self.log: Any = log if log is not None else _log
        self.templates = templates
        self.metrics = metrics
        self._cache: dict[str, tuple[tuple[int, int], dict[str, list[Missing]]]] = {}
        self._generation = 0

    def invalidate(self) -> None:
        """The templates changed (a reload): recompute for every server."""
        self._generation += 1

    async def refresh(self, servers: Sequence[ComfyServer], *, force: bool = False) -> None:
        """Make the servers list our model folders and look at them (coalesced across handlers)."""
        folders = model_folders(self.templates().values())
        calls = []
        for server in servers:
            new = not folders <= server.folders
            server.folders |= folders
            calls.append(server.refresh(max_age_s=0.0 if (new or force) else 0.5))
        await asyncio.gather(*calls)

    def missing_on(self, server: ComfyServer) -> dict[str, list[Missing]]:
        """Template name → what ``server`` lacks for it (only templates that lack something)."""
        key = (server.caps_version, self._generation)
        cached = self._cache.get(server.base_url)
        if cached is not None and cached[0] == key:
            return cached[1]
        found: dict[str, list[Missing]] = {}
        if server.caps is not None:
            for name, workflow in self.templates().items():
                lacks = missing(workflow, server.caps)
                if lacks:
                    found[name] = lacks
        self._cache[server.base_url] = (key, found)
        self._report(server, found, cached[1] if cached is not None else None)
        return found

    def _report(
        self,
        server: ComfyServer,
        found: dict[str, list[Missing]],
        before: dict[str, list[Missing]] | None,
    ) -> None:
        count = sum(len(items) for items in found.values())
        if self.metrics is not None:
            self.metrics.comfy_missing.labels(server.name, self.kind).set(count)
        if found == (before or {}) and before is not None:
            return
        if found:
            for name, items in found.items():
                self.log.warning(
                    "comfyui_cannot_run",
                    kind=self.kind,
                    server=server.name,
                    base_url=server.base_url,
                    workflow=name,
                    missing=summary(items),
                )
        elif before:
            self.log.info("comfyui_can_run", kind=self.kind, server=server.name)

    def problems(self, servers: Sequence[ComfyServer]) -> list[str]:
        """Each server that is down or lacks something, in words."""
        out = []
        for server in servers:
            if not server.up:
                out.append(
                    f"server {server.name} ({server.base_url}) down: "
                    f"{server.client.last_error or 'not answering'}"
                )
                continue
            for name, items in self.missing_on(server).items():
                out.append(
                    f"server {server.name} cannot run {self.kind} workflow {name}: "
                    f"missing {summary(items)}"
                )
        return out


def workflow_files(directory: Path | None) -> tuple[tuple[str, int, int], ...]:
    """Name, size and mtime of each template file: what a reload watches for."""
    if directory is None or not directory.is_dir():
        return ()
    entries = []
    for path in sorted(directory.glob("*.json")):
        try:
            stat = path.stat()
        except OSError:
            continue
        entries.append((path.name, stat.st_size, stat.st_mtime_ns))
    return tuple(entries)
