"""``create_app(settings)``: the one place the application is assembled.

Resources open in ``cleanup_ctx`` in dependency order and close in reverse:
embedded endpoint → HTTP session and AWS clients → store/queue/results →
handlers → consumer. So the consumer drains before the clients it uses close.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from shortdrama_worker import api, keys
from shortdrama_worker.api import job_view
from shortdrama_worker.auth import authenticate
from shortdrama_worker.aws import open_clients
from shortdrama_worker.consumer import Consumer
from shortdrama_worker.context import GpuSlots
from shortdrama_worker.embedded import embedded_aws
from shortdrama_worker.handlers.base import Handler, HandlerEnv
from shortdrama_worker.inputs import InputFetcher, InputRules, PixelBudget
from shortdrama_worker.metrics import Metrics
from shortdrama_worker.middleware import body_deadline, json_errors, request_context
from shortdrama_worker.netguard import AddressPolicy, guarded_session
from shortdrama_worker.plugins import HandlerRegistry, PluginError
from shortdrama_worker.provision import provision
from shortdrama_worker.queue import JobQueue
from shortdrama_worker.results import ResultStore
from shortdrama_worker.runner import JobRunner
from shortdrama_worker.settings import Settings
from shortdrama_worker.store import TaskStore
from shortdrama_worker.webhooks import WebhookSender

log = structlog.get_logger("shortdrama_worker.app")

CleanupCtx = Callable[[web.Application], AsyncIterator[None]]


def create_app(
    settings: Settings,
    *,
    registry: HandlerRegistry | None = None,
    metrics: Metrics | None = None,
) -> web.Application:
    """Build the application. Handlers come from entry points unless ``registry`` is given."""
    app = web.Application(
        client_max_size=settings.api.max_body_bytes,
        middlewares=[request_context, json_errors, authenticate, body_deadline],
    )
    app[keys.SETTINGS] = settings
    app[keys.METRICS] = metrics or Metrics()
    app[keys.REGISTRY] = (
        registry if registry is not None else HandlerRegistry.discover(settings.handlers.allow)
    )
    app[keys.METRICS].declare_kinds(list(app[keys.REGISTRY].by_kind))
    app.cleanup_ctx.extend([_aws_endpoint, _clients, _services, _handlers, _consumer])
    api.add_routes(app)
    return app


def instance_id(settings: Settings) -> str:
    """The owner name of this process's leases: unique per process lifetime.

    The configured (or host:pid) name is for people; the random suffix makes
    two processes sharing a configured id, or a pid reused after a restart,
    distinct owners, so neither can take the other's lease for its own.
    """
    name = settings.instance_id or f"{socket.gethostname()}:{os.getpid()}"
    return f"{name}/{secrets.token_hex(4)}"


async def _aws_endpoint(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    if settings.local.embedded_aws:
        async with embedded_aws(settings.local.embedded_aws_port) as url:
            app[keys.ENDPOINT_URL] = url
            yield
    else:
        app[keys.ENDPOINT_URL] = settings.aws.endpoint_url or ""
        yield


async def _clients(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    endpoint = app[keys.ENDPOINT_URL] or None
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    policy = AddressPolicy(settings.inputs.allow_networks)
    # Two sessions: one for the services the operator configured (ComfyUI,
    # providers), one for URLs clients chose (inputs, webhooks) whose every
    # resolved address is checked before it is contacted.
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        guarded_session(policy, timeout) as untrusted,
        open_clients(settings.aws, endpoint) as clients,
    ):
        app[keys.HTTP] = http
        app[keys.UNTRUSTED_HTTP] = untrusted
        app[keys.ADDRESS_POLICY] = policy
        app[keys.INPUT_RULES] = InputRules(settings.inputs, policy, settings.results)
        app[keys.AWS] = clients
        yield


async def _services(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    clients = app[keys.AWS]
    if settings.local.provision or settings.local.embedded_aws:
        for line in await provision(clients, settings):
            log.info("provisioned", resource=line)
    app[keys.STORE] = TaskStore(
        clients.dynamodb,
        settings.store.table,
        ttl_days=settings.store.ttl_days,
        status_index=settings.store.status_index,
    )
    queue = JobQueue(clients.sqs, settings)
    await queue.resolve()
    app[keys.QUEUE] = queue
    app[keys.RESULTS] = ResultStore(clients.s3, settings.results)
    configured = settings.api.job_id_secret
    app[keys.JOB_ID_SECRET] = (
        configured.get_secret_value().encode()
        if configured is not None
        else await app[keys.STORE].shared_secret("job_ids")
    )
    yield
    await queue.aclose()


async def _handlers(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    handlers: dict[str, Handler] = {}
    try:
        for spec in app[keys.REGISTRY]:
            raw = settings.handlers.options.get(spec.kind, {})
            section: Any = raw
            if spec.cls.settings_model is not None:
                try:
                    section = spec.cls.settings_model.model_validate(raw)
                except Exception as exc:
                    raise PluginError(f"[handlers.options.{spec.kind}] is invalid: {exc}") from None
            env = HandlerEnv(
                kind=spec.kind,
                http=app[keys.HTTP],
                log=structlog.get_logger(f"shortdrama_worker.handlers.{spec.kind}"),
                settings=section,
                metrics=app[keys.METRICS],
            )
            handler = spec.cls(env)
            await handler.startup()
            handlers[spec.kind] = handler
        app[keys.HANDLERS] = handlers
        metrics = app[keys.METRICS]
        base_url = (settings.api.public_url or "").rstrip("/")
        webhooks = WebhookSender(
            app[keys.UNTRUSTED_HTTP],
            app[keys.STORE],
            settings.webhooks,
            render=lambda task: job_view(task, base_url),
            policy=app[keys.ADDRESS_POLICY],
        )
        app[keys.WEBHOOKS] = webhooks
        app[keys.RUNNER] = JobRunner(
            settings=settings,
            owner=instance_id(settings),
            store=app[keys.STORE],
            queue=app[keys.QUEUE],
            results=app[keys.RESULTS],
            fetcher=InputFetcher(
                app[keys.UNTRUSTED_HTTP],
                app[keys.AWS].s3,
                app[keys.INPUT_RULES],
                PixelBudget(settings.inputs.max_pixels_in_flight),
            ),
            http=app[keys.HTTP],
            registry=app[keys.REGISTRY],
            handlers=handlers,
            metrics=metrics,
            gpu_slots=GpuSlots(settings.gpu.slots, metrics),
            webhooks=webhooks,
        )
        yield
        await webhooks.close()
    finally:
        for kind, handler in handlers.items():
            try:
                await handler.shutdown()
            except Exception:
                log.exception("handler_shutdown_failed", kind=kind)


async def _consumer(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    if not settings.consumer.enabled:
        app[keys.CONSUMER] = None
        yield
        return
    consumer = Consumer(settings, app[keys.QUEUE], app[keys.RUNNER])
    app[keys.CONSUMER] = consumer
    consumer.start()
    try:
        yield
    finally:
        await consumer.stop()
