"""The embedded AWS-compatible endpoint for the local profile: moto's server.

It runs in a thread of this process on a loopback port; everything else talks
to it over HTTP exactly as it would to AWS.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog

log = structlog.get_logger("shortdrama_worker.embedded")


@asynccontextmanager
async def embedded_aws(port: int = 0) -> AsyncIterator[str]:
    """Start moto's server on 127.0.0.1 and yield its endpoint URL."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:  # the `local` extra is not installed
        raise RuntimeError(
            "local.embedded_aws needs moto: pip install 'shortdrama-worker[local]'"
        ) from exc
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    host, bound = server.get_host_and_port()
    url = f"http://{host}:{bound}"
    log.info("embedded_aws_started", endpoint_url=url)
    try:
        yield url
    finally:
        server.stop()
