"""The embedded AWS-compatible endpoint for the local profile: moto's server.

It runs in a child process of the daemon on a loopback port; everything else
talks to it over HTTP exactly as it would to AWS. With a state directory its
tables and files outlive the process (``localstate``); with a fixed port the
result URLs handed out before a restart keep working after it.

Why a process and not a thread: moto is pure Python. In a thread it shares
the daemon's GIL, and under load it took about half of it (request parsing,
condition expressions, response serialisation), so the daemon could never use
more than one core in all. In its own process it has its own interpreter and
core. The child lives exactly as long as the daemon: it ignores SIGINT and
SIGTERM (a terminal's Ctrl-C and a service manager reach the whole process
group, and the daemon's drain still needs the endpoint), stops when told, and
exits on its own when the daemon dies (kill -9), as the thread did; the
journal is written before each answer either way.
"""

from __future__ import annotations

import asyncio
import importlib.util
import multiprocessing
import os
import signal
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import structlog

from shortdrama_worker.aws.localstate import StateDir, StateDirBusy
from shortdrama_worker.logconfig import configure_logging
from shortdrama_worker.settings import LogSettings

log = structlog.get_logger("shortdrama_worker.aws.embedded")


def one_write_at_a_time(app: Any) -> Any:
    """moto's DynamoDB with DynamoDB's atomicity: one request at a time.

    moto applies a conditional write as read, check, write without a lock, so
    two concurrent writes to one item can both pass their condition; DynamoDB
    applies them one after the other. Counters and claims rely on that, so
    DynamoDB requests are serialised here (they take a millisecond or two);
    S3 and SQS requests, long polls included, are not.
    """
    lock = threading.Lock()

    def serve(environ: dict[str, Any], start_response: Any) -> Any:
        if not environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB"):
            return app(environ, start_response)
        with lock:
            return list(app(environ, start_response))

    return serve


class EmbeddedEndpoint:
    """moto's WSGI app behind werkzeug's threaded server, journaled when given a state dir."""

    def __init__(self, port: int, state: StateDir | None) -> None:
        try:
            from moto.moto_server.werkzeug_app import (
                DomainDispatcherApplication,
                MotoRequestHandler,
                create_backend_app,
            )
            from werkzeug.serving import make_server
        except ImportError as exc:  # the `local` extra is not installed
            raise RuntimeError(
                "local.embedded_aws needs moto: pip install 'shortdrama-worker[local]'"
            ) from exc
        self.state = state
        self.app: Any = DomainDispatcherApplication(create_backend_app)
        served = one_write_at_a_time(state.middleware(self.app) if state is not None else self.app)
        self._server = make_server(
            "127.0.0.1", port, served, threaded=True, request_handler=MotoRequestHandler
        )
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        if self.state is not None:
            self.state.open(self.app)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join()
        self._server.server_close()
        if self.state is not None:
            self.state.close(self.app)


class RunningEndpoint:
    """What the daemon knows of the endpoint running in its child process."""

    def __init__(self, url: str, restored_entries: int) -> None:
        self.url = url
        self.restored_entries = restored_entries


# Errors the child reports by name are raised again here as the same type.
_ERRORS: dict[str, type[Exception]] = {
    "StateDirBusy": StateDirBusy,
    "OSError": OSError,
    "RuntimeError": RuntimeError,
}


def _child(
    port: int, state_dir: Path | None, region: str, logging: LogSettings | None, conn: Connection
) -> None:
    """The child process: serve until told to stop, or until the daemon is gone."""
    # The daemon decides when this ends (see the module docstring).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if logging is not None:  # the same log lines as the daemon's (snapshot, replay)
        configure_logging(logging)
    try:
        state = StateDir(state_dir, region) if state_dir is not None else None
        endpoint = EmbeddedEndpoint(port, state)
        try:
            endpoint.start()
        except BaseException:
            endpoint._server.server_close()
            raise
    except Exception as exc:
        name = next((n for n, t in _ERRORS.items() if isinstance(exc, t)), "RuntimeError")
        conn.send(("error", name, str(exc)))
        return
    conn.send(("ready", endpoint.url, state.restored_entries if state is not None else 0))
    try:
        conn.recv()
    except EOFError:
        # The daemon died without stopping us (kill -9): go as it went, with
        # no snapshot; every acknowledged write is in the journal already.
        os._exit(0)
    endpoint.stop()
    conn.send(("stopped",))


@asynccontextmanager
async def embedded_aws(
    port: int = 0,
    state_dir: Path | None = None,
    region: str = "us-east-1",
    logging: LogSettings | None = None,
) -> AsyncIterator[RunningEndpoint]:
    """Start moto's server on 127.0.0.1 in a child process (restoring ``state_dir``)."""
    if importlib.util.find_spec("moto") is None:  # the `local` extra is not installed
        raise RuntimeError("local.embedded_aws needs moto: pip install 'shortdrama-worker[local]'")
    # spawn, not fork: forking a process that runs an event loop and threads
    # copies their locks in whatever state they are in.
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    child = context.Process(
        target=_child,
        args=(port, state_dir, region, logging, theirs),
        name="embedded-aws",
        daemon=True,
    )
    child.start()
    theirs.close()  # so the child's death reads as EOF here, and ours as EOF there
    try:
        # Replaying a large journal takes a while; the loop stays responsive.
        message = await asyncio.to_thread(_receive, ours, child)
        if message[0] == "error":
            raise _ERRORS[message[1]](message[2])
        endpoint = RunningEndpoint(message[1], message[2])
    except BaseException:
        ours.close()
        await asyncio.to_thread(child.join)
        raise
    log.info(
        "embedded_aws_started",
        endpoint_url=endpoint.url,
        state_dir=str(state_dir or ""),
        pid=child.pid,
    )
    try:
        yield endpoint
    finally:
        await asyncio.to_thread(_stop, ours, child)


def _receive(conn: Connection, child: Any) -> tuple[Any, ...]:
    try:
        message: tuple[Any, ...] = conn.recv()
    except EOFError:
        child.join()
        raise RuntimeError(
            f"the embedded AWS endpoint exited during start-up (exit code {child.exitcode})"
        ) from None
    return message


def _stop(conn: Connection, child: Any) -> None:
    """Ask the child to stop (it writes its snapshot) and wait for it."""
    try:
        conn.send(("stop",))
        conn.recv()
    except (EOFError, OSError):
        log.error("embedded_aws_lost", exit_code=child.exitcode)
    conn.close()
    child.join()
