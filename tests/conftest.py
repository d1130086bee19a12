"""Shared fixtures: one moto server (real HTTP) per session, a fresh set of AWS
resources per test, and running applications built by ``create_app``.

Under pytest-xdist (``make test`` runs ``-n``) each worker is its own session,
so each has its own moto server; resource names are unique per test anyway.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from shortdrama_worker.app import create_app
from shortdrama_worker.aws.clients import AwsClients, open_clients
from shortdrama_worker.aws.embedded import EmbeddedEndpoint
from shortdrama_worker.plugins import HandlerRegistry
from shortdrama_worker.provenance.certs import DevCertificate, make_dev_certificate
from shortdrama_worker.settings import Settings, load_settings


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` (daemons in subprocesses, a real Prometheus, a
    browser, the fuzzer, the load run) go to one xdist worker, one after
    another: each is CPU-hungry, and two at once on a small machine would
    stretch each other's deadlines, not just the wall clock."""
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(pytest.mark.xdist_group("slow"))


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto in server mode: every AWS call in the tests crosses real HTTP.

    The same endpoint the local profile embeds, whose DynamoDB applies
    concurrent conditional writes one at a time, as DynamoDB does.
    """
    endpoint = EmbeddedEndpoint(0, None)
    endpoint.start()
    yield endpoint.url
    endpoint.stop()


@pytest.fixture(scope="session")
def dev_certificate(tmp_path_factory: pytest.TempPathFactory) -> DevCertificate:
    """One development CA and C2PA signing certificate for the whole run."""
    return make_dev_certificate(tmp_path_factory.mktemp("c2pa"))


@pytest.fixture
def make_settings(
    moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, dev_certificate: DevCertificate
) -> Callable[..., Settings]:
    """Settings with names unique to the test, tuned so the test runs in seconds."""
    # The developer's own environment must not leak into the tests.
    import os

    for name in list(os.environ):
        if name.startswith("SHORTDRAMA_"):
            monkeypatch.delenv(name)
    suffix = uuid.uuid4().hex[:8]

    def make(**sections: Any) -> Settings:
        base: dict[str, Any] = {
            "aws": {"endpoint_url": moto_endpoint},
            "queues": {
                "gpu_queue": f"gpu_{suffix}",
                "cpu_queue": f"cpu_{suffix}",
                "visibility_timeout_s": 10,
                "wait_time_s": 1,
            },
            "store": {"table": f"task_store_{suffix}"},
            "results": {"bucket": f"results-{suffix}"},
            "api": {"port": 0},
            "consumer": {
                "backoff_base_s": 0.2,
                "backoff_max_s": 1.0,
                "cancel_poll_s": 0.2,
                "shutdown_grace_s": 2.0,
                "progress_min_interval_s": 0.0,
                "progress_delay_s": 0.0,
            },
            # Test image servers listen on loopback, which production refuses.
            "inputs": {"allow_http": True, "timeout_s": 3.0, "allow_networks": ["127.0.0.0/8"]},
            "local": {"provision": True},
            # Results are signed as in production, with a development certificate.
            "provenance": {
                "certificate": str(dev_certificate.chain),
                "private_key": str(dev_certificate.key),
            },
        }
        for section, values in sections.items():
            if isinstance(values, dict) and isinstance(base.get(section), dict):
                base[section] = {**base[section], **values}
            else:
                base[section] = values
        return load_settings(None, **base)

    return make


Started = tuple[web.Application, TestClient]  # type: ignore[type-arg]


@pytest.fixture
async def start_app() -> AsyncIterator[Callable[..., Awaitable[Started]]]:
    """Start applications; each is stopped (and drained) at the end of the test."""
    clients: list[TestClient] = []  # type: ignore[type-arg]

    async def start(settings: Settings, registry: HandlerRegistry | None = None) -> Started:
        app = create_app(settings, registry=registry)
        client = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return app, client

    yield start
    for client in reversed(clients):
        await client.close()


@pytest.fixture
async def aws(
    make_settings: Callable[..., Settings], moto_endpoint: str
) -> AsyncIterator[AwsClients]:
    """Raw AWS clients for a test to look behind the daemon's back."""
    settings = make_settings()
    async with open_clients(settings.aws, moto_endpoint) as clients:
        yield clients
