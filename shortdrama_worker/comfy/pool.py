"""Several ComfyUI servers per daemon: one per GPU, each with its own slots.

ComfyUI drives one device per process, so a machine with several GPUs runs
one ComfyUI per GPU. A :class:`ComfyServer` is one of them: its client, its
slots (one prompt executing at a time by default) plus ``queue_ahead`` prompts
waiting in ComfyUI's own queue, whether it answers, and what it can run
(:mod:`shortdrama_worker.comfy.capabilities`). A prompt queued ahead lets
ComfyUI start it the moment the running one ends, without waiting for the
worker to see that end and answer with the next ``POST /prompt``. A job takes a slot on a
server that is up and can run its template (:meth:`ServerPool.lease`); a
server that goes down is skipped until a probe finds it back, and only the
job whose prompt it was running is lost (and retried).

Servers are shared by every ComfyUI handler of the application: the
camera-angle and the edit handler pointed at the same ComfyUI must share its
slot, or each would believe the GPU free. The handler contract has no
application-wide place for such an object, so the pool is kept per HTTP
session — the host hands every handler the application's one session — and
a server is identified by its base URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import time
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog

from shortdrama_worker.comfy.capabilities import Capabilities
from shortdrama_worker.comfy.client import ComfyClient, ComfyClientOptions
from shortdrama_worker.comfy.errors import ComfyUnavailableError
from shortdrama_worker.contract.errors import PermanentJobError

log = structlog.get_logger("shortdrama_worker.comfy")

# A job waiting for a slot re-checks this often even without a wake-up, so a
# server state change that nobody announced cannot strand it.
_RECHECK_S = 1.0


@dataclass(frozen=True)
class ServerConfig:
    """One ComfyUI as configured: a label for metrics and logs, its URL, its slots."""

    name: str
    base_url: str
    slots: int = 1
    queue_ahead: int = 1
    """Prompts kept queued inside ComfyUI beyond the ``slots`` executing."""


class ComfyServer:
    """One ComfyUI process: client, slots, health and capabilities."""

    def __init__(
        self, config: ServerConfig, client: ComfyClient, metrics: Any, pool: ServerPool
    ) -> None:
        self.name = config.name
        self.base_url = config.base_url
        self.slots = config.slots
        self.capacity = config.slots + config.queue_ahead
        """Prompts given to it at once: executing, or queued inside ComfyUI."""
        self.client = client
        self.metrics = metrics
        self.pool = pool
        self.in_use = 0
        self.expected = 0
        """Jobs that uploaded here and wait for a slot (see ``ServerPool.pick``)."""
        self.caps: Capabilities | None = None
        self.caps_version = 0
        """Bumped whenever ``caps`` changes, so users recompute what is missing."""
        self.folders: set[str] = set()
        """Model folders some handler's templates load from; listed on each refresh."""
        self.interval_s = math.inf
        self._refreshed_at = -math.inf
        self._lock = asyncio.Lock()
        self._down_since: float | None = None
        client.on_reachability = self._reachability
        if metrics is not None:
            metrics.comfy_server_up.labels(self.name).set(0)
            metrics.comfy_slots_in_use.labels(self.name).set(0)
            metrics.comfy_busy.labels(self.name)
            metrics.comfy_unhonoured.labels(self.name).set(0)

    @property
    def up(self) -> bool:
        """Not known to be down (a server never asked yet counts as up)."""
        return self.client.reachable is not False

    @property
    def free(self) -> int:
        return self.capacity - self.in_use

    def _reachability(self, up: bool) -> None:
        # One line per transition, whoever noticed it (probe or job), so the
        # first sign of a crash is not a retried job half a minute later.
        if up:
            down_for = None if self._down_since is None else time.monotonic() - self._down_since
            self._down_since = None
            self.client.log.info(
                "comfyui_up",
                server=self.name,
                base_url=self.base_url,
                down_s=None if down_for is None else round(down_for, 1),
            )
        else:
            self._down_since = time.monotonic()
            self.client.log.warning(
                "comfyui_down",
                server=self.name,
                base_url=self.base_url,
                error=self.client.last_error,
            )
        if self.metrics is not None:
            self.metrics.comfy_server_up.labels(self.name).set(1 if up else 0)
        self.pool.changed()

    async def refresh(self, *, max_age_s: float = 0.0) -> None:
        """Probe health, node types and model lists; coalesced across callers.

        Never raises: a failure marks the server down (and logs it once).
        """
        if time.monotonic() - self._refreshed_at < max_age_s:
            return
        async with self._lock:
            if time.monotonic() - self._refreshed_at < max_age_s:
                return  # another caller refreshed while this one waited
            try:
                await self._refresh()
            except (ComfyUnavailableError, PermanentJobError):
                # A 4xx from /system_stats means this is no ComfyUI we can use.
                self.client.reachable = False
            finally:
                self._refreshed_at = time.monotonic()
            self.pool.changed()

    async def _refresh(self) -> None:
        stats = await self.client.system_stats()
        if "system" not in stats:
            raise PermanentJobError(f"{self.base_url}/system_stats is not ComfyUI's")
        nodes = await self.client.object_info()
        models = {}
        for folder in sorted(self.folders):
            files = await self.client.models(folder)
            if files is not None:
                models[folder] = frozenset(files)
        caps = Capabilities(nodes=nodes, models=models)
        if caps != self.caps:
            self.caps = caps
            self.caps_version += 1

    async def probe_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.refresh()
            except Exception:  # a dead probe would freeze the state at its last value
                self.client.log.exception("comfyui_probe_crashed", server=self.name)

    def take(self) -> None:
        self.in_use += 1
        if self.metrics is not None:
            self.metrics.comfy_slots_in_use.labels(self.name).set(self.in_use)

    def give_back(self, busy_s: float) -> None:
        self.in_use -= 1
        if self.metrics is not None:
            self.metrics.comfy_slots_in_use.labels(self.name).set(self.in_use)
            self.metrics.comfy_busy.labels(self.name).inc(busy_s)
        self.pool.changed()


class Lease:
    """A place on one server, held until the ``lease`` block ends or ``keep_until`` is done."""

    def __init__(self, server: ComfyServer) -> None:
        self.server = server
        self.queued = server.in_use > server.slots
        """Taken beyond the executing slots: the prompt will wait inside ComfyUI."""
        self.keep: asyncio.Future[Any] | None = None
        self.executing_since: float | None = None

    def keep_until(self, work: asyncio.Future[Any]) -> None:
        """Hold the place past the block until ``work`` finishes (a prompt still running)."""
        self.keep = work

    def executing(self, since: float | None) -> None:
        """When ComfyUI began executing the prompt (monotonic), for the busy seconds.

        Time spent queued inside ComfyUI behind another prompt is not busy time,
        or a queued-ahead prompt would count the GPU twice.
        """
        self.executing_since = since

    def busy_s(self, now: float) -> float:
        since = self.executing_since
        return 0.0 if since is None else max(0.0, now - since)


class ServerPool:
    """The application's ComfyUI servers, by base URL, and the slots among them."""

    def __init__(self) -> None:
        self.servers: dict[str, ComfyServer] = {}
        self._users: dict[str, int] = {}
        self._probes: dict[str, asyncio.Task[None]] = {}
        self._changed = asyncio.Condition()
        self._background: set[asyncio.Task[None]] = set()
        self._reload_hooks: list[Callable[[], None]] = []
        self._sighup = False

    def changed(self) -> None:
        """Wake jobs waiting for a slot: a server freed one, came back or went down."""

        async def notify() -> None:
            async with self._changed:
                self._changed.notify_all()

        self._spawn(notify())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def attach(
        self,
        configs: Sequence[ServerConfig],
        *,
        http: aiohttp.ClientSession,
        options: ComfyClientOptions,
        metrics: Any,
        interval_s: float,
        log: Any = None,
    ) -> list[ComfyServer]:
        """The servers for one handler, created on first use; each is probed in the background."""
        servers = []
        for config in configs:
            server = self.servers.get(config.base_url)
            if server is not None and (server.slots, server.capacity) != (
                config.slots,
                config.slots + config.queue_ahead,
            ):
                # One ComfyUI has one queue: two kinds may not each believe their own numbers.
                raise ValueError(
                    f"ComfyUI {config.base_url} is configured twice with different slots or "
                    f"queue_ahead ({server.slots}+{server.capacity - server.slots} and "
                    f"{config.slots}+{config.queue_ahead}); give every kind that uses it the same"
                )
            if server is None:
                client = ComfyClient(
                    config.base_url, http, options=options, metrics=metrics, log=log
                )
                server = ComfyServer(config, client, metrics, self)
                self.servers[config.base_url] = server
            self._users[config.base_url] = self._users.get(config.base_url, 0) + 1
            if interval_s < server.interval_s:
                server.interval_s = interval_s
                probe = self._probes.pop(config.base_url, None)
                if probe is not None:
                    probe.cancel()
            if config.base_url not in self._probes:
                self._probes[config.base_url] = asyncio.create_task(
                    server.probe_forever(), name=f"comfyui-probe-{server.name}"
                )
            servers.append(server)
        return servers

    async def detach(self, servers: Iterable[ComfyServer]) -> None:
        """Give back ``attach``'s servers; the last user stops a server's probe."""
        stopping = []
        for server in servers:
            self._users[server.base_url] -= 1
            if self._users[server.base_url] == 0:
                del self.servers[server.base_url]  # a later user starts from its own settings
                probe = self._probes.pop(server.base_url, None)
                if probe is not None:
                    probe.cancel()
                    stopping.append(probe)
        for probe in stopping:
            with contextlib.suppress(asyncio.CancelledError):
                await probe
        if not any(self._users.values()):
            self._remove_sighup()
            for task in list(self._background):
                task.cancel()
            await asyncio.gather(*self._background, return_exceptions=True)

    def pick(
        self, servers: Sequence[ComfyServer], can_run: Callable[[ComfyServer], bool]
    ) -> ComfyServer | None:
        """Where a job should upload: the least loaded up server that can run it.

        ``None`` when no server that is up can run it. A job waits for its slot
        after uploading, and is run by whichever able server frees first, so
        this is only the likely one.
        """
        able = [s for s in servers if s.up and can_run(s)]
        if not able:
            return None
        # Count the jobs already headed there, or a burst of jobs picking at
        # once would all upload to the first server and most would switch.
        chosen = min(able, key=lambda s: ((s.in_use + s.expected) / s.capacity, -s.free))
        chosen.expected += 1
        return chosen

    def unpick(self, server: ComfyServer) -> None:
        """A job that ``pick`` sent to ``server`` will not ask ``lease`` for it after all."""
        server.expected = max(0, server.expected - 1)

    @asynccontextmanager
    async def lease(
        self,
        servers: Sequence[ComfyServer],
        can_run: Callable[[ComfyServer], bool],
        *,
        prefer: ComfyServer | None = None,
    ) -> AsyncIterator[Lease]:
        """Hold a slot on a free server that is up and can run the job.

        ``prefer`` (where the inputs were uploaded) wins when it is free too.
        Raises ``ComfyUnavailableError`` once no able server is up: waiting for
        a dead server would only burn the job's time limit.
        """
        try:
            server = await self._acquire(servers, can_run, prefer)
        finally:
            if prefer is not None:
                self.unpick(prefer)
        lease = Lease(server)
        try:
            yield lease
        finally:
            if lease.keep is not None and not lease.keep.done():
                keep = lease.keep
                self._spawn(self._release_after(lease, keep))
            else:
                server.give_back(lease.busy_s(time.monotonic()))

    async def _release_after(self, lease: Lease, work: asyncio.Future[Any]) -> None:
        try:
            await asyncio.wait({work})
        finally:
            lease.server.give_back(lease.busy_s(time.monotonic()))

    async def _acquire(
        self,
        servers: Sequence[ComfyServer],
        can_run: Callable[[ComfyServer], bool],
        prefer: ComfyServer | None,
    ) -> ComfyServer:
        async with self._changed:
            while True:
                able = [s for s in servers if s.up and can_run(s)]
                if not able:
                    down = ", ".join(f"{s.name} ({s.base_url})" for s in servers if not s.up)
                    raise ComfyUnavailableError(
                        f"no ComfyUI server can take the job now (down: {down or 'none'})"
                    )
                free = [s for s in able if s.free > 0]
                if free:
                    chosen = prefer if prefer in free else free[0]
                    assert chosen is not None
                    chosen.take()
                    return chosen
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), _RECHECK_S)

    # -- workflow reloads on SIGHUP ----------------------------------------------------

    def on_reload(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` on SIGHUP (installed once for the whole pool)."""
        self._reload_hooks.append(hook)
        if self._sighup:
            return
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._hangup)
        except (NotImplementedError, RuntimeError, ValueError):
            return  # not the main thread, or no signals here: file changes still reload
        self._sighup = True

    def _hangup(self) -> None:
        log.info("comfyui_workflows_reload_requested", signal="SIGHUP")
        for hook in list(self._reload_hooks):
            hook()

    def _remove_sighup(self) -> None:
        if self._sighup:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            self._sighup = False
        self._reload_hooks.clear()


_POOLS: weakref.WeakKeyDictionary[aiohttp.ClientSession, ServerPool] = weakref.WeakKeyDictionary()


def pool_for(http: aiohttp.ClientSession) -> ServerPool:
    """The pool of the application that owns ``http`` (see the module docstring)."""
    pool = _POOLS.get(http)
    if pool is None:
        pool = _POOLS[http] = ServerPool()
    return pool
