"""The job API (v1): submit, status, cancel, list kinds; health, readiness, metrics.

Route handlers are thin: they parse the request, call a service that raises
typed errors (``submission.Submitter``), and map those to responses.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shortdrama_worker import keys
from shortdrama_worker.access import may_read, may_submit
from shortdrama_worker.aws.store import StaleTransition, StoreError, Task
from shortdrama_worker.jobs.outcomes import CancelReason
from shortdrama_worker.jobs.submission import Request, SubmitError
from shortdrama_worker.jobs.view import job_view, render_job
from shortdrama_worker.plugins import HandlerSpec, unknown_kind_message
from shortdrama_worker.settings import Resource
from shortdrama_worker.web.auth import REQUEST_KEY
from shortdrama_worker.web.openapi import build_openapi
from shortdrama_worker.web.responses import error_response
from shortdrama_worker.web.uploads import BodyError, read_body

log = structlog.get_logger("shortdrama_worker.web.api")

# Submit bodies: JSON (a missing Content-Type is read as JSON, as older clients
# send it), or a form with files (``uploads``).
_SUBMIT_MEDIA_TYPES = frozenset({"application/json", "multipart/form-data"})


def base_url(request: web.Request) -> str:
    """Where clients reach this API: configured, an allowed Host, or the bound address.

    The Host header is the client's word; echoing any value would let a
    request point ``Location`` and ``status_url`` at a host of its choosing.
    """
    api = request.app[keys.SETTINGS].api
    if api.public_url:
        return api.public_url.rstrip("/")
    host = request.headers.get("Host", "")
    if host and host.lower() in (h.lower() for h in api.allowed_hosts):
        return f"{request.scheme}://{host}"
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        address, port = str(sockname[0]), int(sockname[1])
    else:
        address, port = api.host, api.port
    shown = f"[{address}]" if ":" in address else address
    return f"http://{shown}:{port}"


def _spec_for(request: web.Request) -> HandlerSpec:
    slug = request.match_info["slug"]
    spec = request.app[keys.REGISTRY].by_slug.get(slug)
    if spec is None:
        raise web.HTTPNotFound(
            text=json.dumps(
                {
                    "error": {
                        "code": "unknown_kind",
                        "message": unknown_kind_message(slug, request.app[keys.SETTINGS].handlers),
                        "available": sorted(request.app[keys.REGISTRY].by_slug),
                    }
                }
            ),
            content_type="application/json",
        )
    return spec


async def submit(request: web.Request) -> web.Response:
    spec = _spec_for(request)
    key = request.get(REQUEST_KEY)
    if not may_submit(key, spec.kind):
        return error_response(403, "forbidden", f"this API key may not submit {spec.kind!r} jobs")
    media_problem = _media_type_problem(request)
    if media_problem:
        return error_response(415, "unsupported_media_type", media_problem)
    try:
        body = await read_body(request, spec)
        asked = Request(spec, key, body, request.headers.get("Idempotency-Key"))
        accepted = await request.app[keys.SUBMITTER].submit(asked)
    except BodyError as exc:
        return exc.response()
    except SubmitError as exc:
        return submit_error(exc)
    return _accepted(request, accepted.task, replayed=accepted.replayed)


def submit_error(exc: SubmitError) -> web.Response:
    """A refused submit as its JSON error, with ``Retry-After`` for a spent limit."""
    extra = {**exc.extra, **({"fields": exc.fields} if exc.fields is not None else {})}
    if exc.retry_after_s is not None:
        extra["retry_after_s"] = exc.retry_after_s
    response = error_response(exc.status, exc.code, exc.message, **extra)
    if exc.retry_after_s is not None:
        response.headers["Retry-After"] = str(exc.retry_after_s)
    return response


def _media_type_problem(request: web.Request) -> str | None:
    """Why the body's declared type is not one submit reads, or ``None``."""
    if "Content-Type" not in request.headers:
        return None
    media = request.content_type.lower()
    if media in _SUBMIT_MEDIA_TYPES or (
        media.startswith("application/") and media.endswith("+json")
    ):
        return None
    return f"Content-Type {media!r} is not accepted; send application/json or multipart/form-data"


def _accepted(request: web.Request, task: Task, *, replayed: bool) -> web.Response:
    """The answer to a submit: the job's public view, as far as a new job has one."""
    view = job_view(task, base_url(request))
    accepted = {k: view[k] for k in ("job_id", "task_id", "kind", "status", "created_at")}
    accepted["status_url"] = view["status_url"]
    headers = {"Location": str(view["status_url"])}
    if replayed:
        # The same answer as the first time; the header says it is a replay.
        headers["Idempotent-Replayed"] = "true"
    return web.json_response(accepted, status=202, headers=headers)


async def readable_job(request: web.Request, task_id: str) -> Task | web.Response:
    """The job, if the caller's key may read it; else the answer to give (404 or 503)."""
    try:
        task = await request.app[keys.STORE].get(task_id)
    except StoreError as exc:
        return error_response(503, "store_unavailable", f"task store unreachable: {exc}")
    if task is None or not may_read(request.get(REQUEST_KEY), task.submitted_by):
        # Another key's job is reported as missing, not as forbidden: ids of
        # other tenants' jobs are not confirmed to exist.
        return error_response(404, "not_found", f"no job {task_id}")
    return task


async def get_job(request: web.Request) -> web.Response:
    task = await readable_job(request, request.match_info["job_id"])
    if isinstance(task, web.Response):
        return task
    # Presigned URLs expire; every stored file gets a fresh one on every read.
    view = await render_job(task, base_url(request), request.app[keys.RESULTS])
    return web.json_response(view)


async def cancel_job(request: web.Request) -> web.Response:
    task_id = request.match_info["job_id"]
    store = request.app[keys.STORE]
    key = request.get(REQUEST_KEY)
    try:
        if key is not None and not key.read_all:
            existing = await store.get(task_id)
            if existing is None or not may_read(key, existing.submitted_by):
                return error_response(404, "not_found", f"no job {task_id}")
        task = await store.request_cancel(task_id)
    except StaleTransition as stale:
        if stale.task is None:
            return error_response(404, "not_found", f"no job {task_id}")
        return error_response(
            409,
            "already_finished",
            f"job {task_id} is already {stale.task.status}",
            job_status=stale.task.status,
        )
    except StoreError as exc:
        return error_response(503, "store_unavailable", f"task store unreachable: {exc}")
    # If it runs here, stop it now rather than at the next heartbeat.
    request.app[keys.RUNNER].cancel_local(task_id, CancelReason.REQUESTED)
    request.app[keys.WEBHOOKS].schedule(task)  # only if it is already cancelled
    view = await render_job(task, base_url(request), request.app[keys.RESULTS])
    return web.json_response(view, status=202)


async def list_handlers(request: web.Request) -> web.Response:
    items = [
        {
            "kind": spec.kind,
            "slug": spec.slug,
            "resource": spec.resource,
            "description": spec.cls.description,
            "timeout_s": spec.cls.timeout_s,
            "distribution": spec.distribution,
            "submit_url": f"/api/v1/{spec.slug}/jobs",
            "input_schema": spec.cls.input_model.model_json_schema(),
        }
        for spec in request.app[keys.REGISTRY]
    ]
    return web.json_response({"handlers": items})


async def health(request: web.Request) -> web.Response:
    app = request.app
    checks = await _dependency_checks(app)
    details = await _handler_checks(app, checks)
    status = "healthy" if all(v == "healthy" for v in checks.values()) else "degraded"
    body: dict[str, Any] = {"status": status, "checks": checks}
    if details:
        body["details"] = details
    if notes := _unconsumed_queues(app):
        body["notes"] = notes
    return web.json_response(body)


async def _dependency_checks(app: web.Application) -> dict[str, str]:
    """The task store, and SQS as the last poll found it."""
    checks: dict[str, str] = {}
    try:
        await app[keys.STORE].get("__health__")
        checks["dynamodb"] = "healthy"
    except StoreError:
        checks["dynamodb"] = "degraded"
    consumer = app[keys.CONSUMER]
    if consumer is not None and consumer.resources:
        checks["sqs"] = "degraded" if consumer.last_poll_ok is False else "healthy"
    return checks


async def _handler_checks(app: web.Application, checks: dict[str, str]) -> dict[str, str]:
    """Each handler's named checks merged into ``checks`` (degraded wins); what they explain."""
    details: dict[str, list[str]] = {}
    for kind, handler in app[keys.HANDLERS].items():
        try:
            for name, state in (await handler.health()).items():
                checks[name] = state if checks.get(name) != "degraded" else "degraded"
            for name, text in _explain(handler).items():
                if text not in details.setdefault(name, []):
                    details[name].append(text)
        except Exception as exc:
            log.warning("health_check_failed", kind=kind, error=str(exc))
            checks[kind] = "degraded"
    return {name: "; ".join(texts) for name, texts in details.items() if texts}


def _unconsumed_queues(app: web.Application) -> dict[str, str]:
    """Queues this instance accepts jobs for but does not consume, in words.

    Notes, not checks: an API-only instance split from its workers is healthy,
    and only the alert ``ShortdramaQueueNotConsumed``, which sees every
    instance, can tell whether some other instance consumes the queue.
    """
    consumer = app[keys.CONSUMER]
    consumed = set(consumer.resources) if consumer is not None else set()
    settings = app[keys.SETTINGS]
    kinds: dict[Resource, list[str]] = {}
    for spec in app[keys.REGISTRY]:
        if spec.resource not in consumed:
            kinds.setdefault(spec.resource, []).append(spec.kind)
    return {
        f"queue:{resource}": (
            f"not consumed here: jobs of {', '.join(sorted(names))} wait in "
            f"{settings.queue_name(resource)} for an instance whose consumer.consume "
            f"includes {resource!r}"
        )
        for resource, names in sorted(kinds.items())
    }


@runtime_checkable
class _Explains(Protocol):
    """A handler that can say in words what its health and readiness found wrong."""

    def explain(self) -> Mapping[str, str]: ...


def _explain(handler: object) -> Mapping[str, str]:
    return handler.explain() if isinstance(handler, _Explains) else {}


async def ready(request: web.Request) -> web.Response:
    reasons = [*_consumer_problems(request.app), *_held_kinds(request.app)]
    if reasons:
        return web.json_response({"ready": False, "reasons": reasons}, status=503)
    return web.json_response({"ready": True})


def _consumer_problems(app: web.Application) -> list[str]:
    consumer = app[keys.CONSUMER]
    if consumer is None:
        return ["consumer not running"] if app[keys.SETTINGS].consumer.enabled else []
    reasons = [] if consumer.running else ["consumer not running"]
    if consumer.draining:
        reasons.append("draining")
    # Ready when every queue this instance consumes has a handler that can
    # run now; a GPU instance whose ComfyUI is down is not ready.
    for resource in consumer.resources:
        if not app[keys.READINESS].ready(resource):
            reasons.append(f"no {resource} handler can run now")
    return reasons


def _held_kinds(app: web.Application) -> list[str]:
    """Consumed kinds that cannot run (their jobs are held), with the reason.

    E.g. the model files a ComfyUI lacks. An API-only instance (no consumer)
    runs nothing, so only /health says so there.
    """
    consumer = app[keys.CONSUMER]
    consumed = set(consumer.resources) if consumer is not None else set()
    reasons = []
    for spec in app[keys.REGISTRY]:
        handler = app[keys.HANDLERS].get(spec.kind)
        if spec.resource not in consumed or handler is None or handler.ready():
            continue
        if why := _explain(handler):
            reasons.append(f"{spec.kind}: " + "; ".join(why.values()))
    return reasons


async def metrics(request: web.Request) -> web.Response:
    payload = generate_latest(request.app[keys.METRICS].registry)
    return web.Response(body=payload, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(build_openapi(request.app[keys.REGISTRY]))


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/{slug}/jobs", submit)
    app.router.add_post("/api/v1/{slug}/tasks", submit)
    app.router.add_get("/api/v1/jobs/{job_id}", get_job)
    app.router.add_get("/api/v1/tasks/{job_id}", get_job)
    app.router.add_delete("/api/v1/jobs/{job_id}", cancel_job)
    app.router.add_delete("/api/v1/tasks/{job_id}", cancel_job)
    app.router.add_get("/api/v1/handlers", list_handlers)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
