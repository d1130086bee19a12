"""The embedded AWS-compatible endpoint for the local profile: moto's server.

It runs in a thread of this process on a loopback port; everything else talks
to it over HTTP exactly as it would to AWS. With a state directory its tables
and files outlive the process (``localstate``); with a fixed port the result
URLs handed out before a restart keep working after it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import structlog

from shortdrama_worker.localstate import StateDir

log = structlog.get_logger("shortdrama_worker.embedded")


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


@asynccontextmanager
async def embedded_aws(
    port: int = 0, state_dir: Path | None = None, region: str = "us-east-1"
) -> AsyncIterator[EmbeddedEndpoint]:
    """Start moto's server on 127.0.0.1 (restoring ``state_dir``) and yield it."""
    state = StateDir(state_dir, region) if state_dir is not None else None
    endpoint = EmbeddedEndpoint(port, state)
    try:
        # Replaying a large journal takes a while; the loop stays responsive.
        await asyncio.to_thread(endpoint.start)
    except BaseException:
        endpoint._server.server_close()
        raise
    log.info("embedded_aws_started", endpoint_url=endpoint.url, state_dir=str(state_dir or ""))
    try:
        yield endpoint
    finally:
        await asyncio.to_thread(endpoint.stop)
