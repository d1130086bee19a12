"""The daemon's lifecycle in one place: start, readiness, signals, sd_notify, drain.

``web.run_app`` closes the listening socket before cleanup, so /ready could
never answer 503 while draining; the runner is driven here instead, with the
same application ``create_app`` builds. The order:

1. ports are checked before anything is provisioned (a second ``make run``
   fails at once, naming the setting to change);
2. the application starts (clients, store, handlers, consumer) and listens;
3. systemd hears ``READY=1`` only then, then ``WATCHDOG=1`` while healthy and
   a ``STATUS=`` line with the work in flight;
4. SIGTERM or SIGINT starts the drain: the consumer stops taking work while the
   API still answers (/ready says 503), running jobs get the grace period, a
   second signal hands them back at once;
5. the application closes (open requests get ``api.shutdown_timeout_s``).
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys

import structlog
from aiohttp import web

from shortdrama_worker import __version__, keys
from shortdrama_worker.app import create_app
from shortdrama_worker.jobs.consumer import Consumer
from shortdrama_worker.jobs.outcomes import CancelReason
from shortdrama_worker.plugins import PluginError
from shortdrama_worker.provenance import CertificateError
from shortdrama_worker.sdnotify import SystemdNotifier
from shortdrama_worker.settings import Settings

log = structlog.get_logger("shortdrama_worker.serve")

EXIT_OK, EXIT_CONFIG, EXIT_UNREACHABLE = 0, 2, 3


class ServeError(Exception):
    """The daemon could not start; ``exit_code`` says why (2 configuration, 3 unreachable)."""

    def __init__(self, message: str, exit_code: int = EXIT_CONFIG) -> None:
        super().__init__(message)
        self.exit_code = exit_code


async def serve(settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT, then drain while the API still answers."""
    check_ports(settings)
    daemon = Daemon(settings)
    await daemon.start()
    daemon.announce()
    await daemon.run_until_signal()
    await daemon.stop()
    return EXIT_OK


class Daemon:
    """One running application, its listening socket and its systemd notifier."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        try:
            self.app = create_app(settings)
        except PluginError as exc:
            raise ServeError(str(exc)) from None
        # After the drain, open requests get api.shutdown_timeout_s to finish; a
        # client trickling a request cannot hold the process past the unit's
        # TimeoutStopSec (aiohttp's own default would wait 60 s).
        self.runner = web.AppRunner(
            self.app,
            handle_signals=False,
            access_log=None,
            shutdown_timeout=settings.api.shutdown_timeout_s,
        )
        self.notifier = SystemdNotifier.from_env()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def consumer(self) -> Consumer | None:
        return self.app[keys.CONSUMER]

    async def start(self) -> None:
        """Open everything and listen; on failure, close what opened and raise ``ServeError``."""
        try:
            await self.runner.setup()
            site = web.TCPSite(self.runner, self.settings.api.host, self.settings.api.port)
            await site.start()
        except Exception as exc:
            # Whatever opened (clients, the embedded endpoint, a consumer that
            # already claimed jobs) is closed and handed back before exiting.
            log.error("startup_failed", error=str(exc))
            consumer = self.app.get(keys.CONSUMER)
            if consumer is not None:
                await consumer.stop()
            await self.runner.cleanup()
            raise _startup_error(exc, self.settings) from None

    @property
    def api_url(self) -> str:
        # With port 0 the OS picks one; the runner knows which.
        addresses = self.runner.addresses
        port = addresses[0][1] if addresses else self.settings.api.port
        return self.settings.api.public_url or f"http://{self.settings.api.host}:{port}"

    def announce(self) -> None:
        """Log and print where to reach the daemon; tell systemd it is ready."""
        endpoint = self.app[keys.ENDPOINT_URL]
        log.info(
            "serving",
            api=self.api_url,
            aws=endpoint or "aws",
            handlers=sorted(self.app[keys.HANDLERS].keys()),
        )
        if sys.stdout.isatty() or self.settings.local.embedded_aws:
            print(f"shortdrama-worker {__version__} serving on {self.api_url}", flush=True)
            print(f"  console: {self.api_url}/   API docs: {self.api_url}/docs", flush=True)
            if self.settings.local.embedded_aws:
                print(f"  embedded AWS endpoint: {endpoint}", flush=True)
                hint = "--image examples/face.png --wait --output /tmp/masked.png"
                print(
                    f"  try: {_command()} submit face-mask --api {self.api_url} {hint}", flush=True
                )
        # READY only now: dependencies answered in runner.setup(), the
        # consumer runs, and the port listens.
        self.notifier.ready(self.status_line())
        self._tasks = [
            asyncio.create_task(self.notifier.run_watchdog(self.healthy), name="sd-watchdog"),
            asyncio.create_task(
                self.notifier.run_status(self.status_line, interval_s=2.0), name="sd-status"
            ),
        ]

    def healthy(self) -> bool:
        consumer = self.consumer
        return consumer is None or consumer.alive

    def status_line(self) -> str:
        consumer = self.consumer
        if consumer is None:
            return "API only (consumer disabled)"
        depths = ", ".join(f"{q} {n}" for q, n in sorted(self.app[keys.DEPTH].depths.items()))
        return (
            f"in flight {consumer.in_flight}, prefetched {consumer.waiting}; "
            f"{depths or 'queues not polled yet'}"
        )

    async def run_until_signal(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        await self._stop.wait()
        log.info("shutdown_requested")

    async def stop(self) -> None:
        """Drain the consumer (a second signal cuts it short), then close the application."""
        watchdog, status = self._tasks
        status.cancel()  # the drain sets its own STATUS; the watchdog pings on while draining
        consumer = self.consumer
        if consumer is not None:
            await self._drain(consumer)
        else:
            self.notifier.stopping()
        await self.runner.cleanup()
        watchdog.cancel()
        self.notifier.close()
        log.info("stopped")

    async def _drain(self, consumer: Consumer) -> None:
        grace = self.settings.consumer.shutdown_grace_s
        self.notifier.stopping(f"draining {consumer.in_flight} job(s), grace {grace:g}s")
        drain = asyncio.create_task(consumer.stop())  # /ready answers 503 from here on

        def hurry() -> None:
            # A second Ctrl-C: running jobs go back to the queue now, not after the grace.
            print("second signal: ending the drain now; running jobs are handed back", flush=True)
            log.warning("drain_cut_short", returning=consumer.in_flight)
            self.app[keys.RUNNER].cancel_all(CancelReason.SHUTDOWN)

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, hurry)
        if consumer.in_flight:
            print(
                f"draining {consumer.in_flight} running job(s) for up to {grace:g} s; "
                "Ctrl-C again to stop now",
                flush=True,
            )
        await drain


def _startup_error(exc: Exception, settings: Settings) -> ServeError:
    if isinstance(exc, PluginError | CertificateError):
        return ServeError(str(exc))
    if isinstance(exc, OSError):
        where = f"{settings.api.host}:{settings.api.port}"
        return ServeError(f"cannot listen on {where}: {exc}", EXIT_UNREACHABLE)
    return ServeError(f"start-up failed: {exc}", EXIT_UNREACHABLE)


def _command() -> str:
    """The command as it was started, so the printed hint works without PATH changes."""
    return sys.argv[0] if not sys.argv[0].endswith("__main__.py") else "python -m shortdrama_worker"


def check_ports(settings: Settings) -> None:
    """Refuse a port that is taken now, naming the setting and variable that move it."""
    wanted = [(settings.api.host, settings.api.port, "api.port", "SHORTDRAMA_API__PORT")]
    if settings.local.embedded_aws and settings.local.embedded_aws_port:
        wanted.append(
            (
                "127.0.0.1",
                settings.local.embedded_aws_port,
                "local.embedded_aws_port",
                "SHORTDRAMA_LOCAL__EMBEDDED_AWS_PORT",
            )
        )
    for host, port, setting, variable in wanted:
        if not port:
            continue
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            # As the server will bind: reusing TIME_WAIT addresses, not live ones.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise ServeError(
                    f"port {port} on {host} is not free ({exc.strerror}): is another "
                    f"shortdrama-worker running? Stop it, or choose another port with "
                    f"{setting} in the config file or {variable}=<port>"
                ) from None
