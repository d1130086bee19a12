"""The job API (v1): submit, status, cancel, list kinds; health, readiness, metrics."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from shortdrama_worker import keys
from shortdrama_worker.admission import admit
from shortdrama_worker.auth import REQUEST_KEY, may_read, may_submit
from shortdrama_worker.contract.fields import REFERENCE_CHECK
from shortdrama_worker.inputs import parse_data_uri, reference_problem
from shortdrama_worker.jobview import render_job
from shortdrama_worker.openapi import build_openapi
from shortdrama_worker.outcomes import CancelReason
from shortdrama_worker.plugins import HandlerSpec, unknown_kind_message
from shortdrama_worker.queue import QueueError
from shortdrama_worker.responses import error_response
from shortdrama_worker.results import ResultStoreError
from shortdrama_worker.reuse import reuse_flag
from shortdrama_worker.store import StaleTransition, StoreError, Task
from shortdrama_worker.uploads import BodyError, read_body, sniff_image

log = structlog.get_logger("shortdrama_worker.api")

# Idempotency keys map to task ids deterministically, so a repeated submit
# hits the same record and the store's conditional put settles the race.
_IDEMPOTENCY_NS = uuid.UUID("6f1d7a3e-5b0c-4a59-9c61-2f3a8e1f4b20")


def _base_url(request: web.Request) -> str:
    configured = request.app[keys.SETTINGS].api.public_url
    return configured.rstrip("/") if configured else f"{request.scheme}://{request.host}"


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


def _field_errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {
            "field": ".".join(str(p) for p in err["loc"]) or "(body)",
            "message": err["msg"],
            "type": err["type"],
        }
        for err in exc.errors(include_url=False, include_input=False)
    ]


async def submit(request: web.Request) -> web.Response:
    app = request.app
    spec = _spec_for(request)
    key = request.get(REQUEST_KEY)
    if not may_submit(key, spec.kind):
        return error_response(403, "forbidden", f"this API key may not submit {spec.kind!r} jobs")
    try:
        body = await read_body(request, spec.cls.input_model.model_json_schema())
    except BodyError as exc:
        return exc.response()
    # The callback URL is about delivery, not the handler's input.
    callback_url = body.pop("callback_url", None)
    if callback_url is not None:
        problem = _callback_problem(callback_url, app[keys.SETTINGS])
        if problem:
            errors = [{"field": "callback_url", "message": problem, "type": "value_error"}]
            return error_response(422, "invalid_input", f"callback_url: {problem}", fields=errors)
    try:
        reuse = reuse_flag(body)  # about answering, not the handler's input
    except ValueError as exc:
        errors = [{"field": "reuse", "message": str(exc), "type": "bool_type"}]
        return error_response(422, "invalid_input", f"reuse: {exc}", fields=errors)
    # Accept the older orchestrator's envelope {"input": {...}} as well.
    payload = body["input"] if set(body) == {"input"} and isinstance(body["input"], dict) else body
    try:
        # Strict at the edge: "12" or true for an integer is refused, as the
        # published schema says, instead of being quietly converted.
        params = spec.cls.input_model.model_validate(
            payload, strict=True, context={REFERENCE_CHECK: reference_problem}
        )
    except ValidationError as exc:
        errors = _field_errors(exc)
        summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return error_response(422, "invalid_input", summary, fields=errors)
    data = params.model_dump(mode="json", exclude_none=True)

    idem_key = request.headers.get("Idempotency-Key")
    body_hash = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    if idem_key is not None:
        if not 1 <= len(idem_key) <= 255:
            return error_response(422, "invalid_header", "Idempotency-Key: must be 1–255 chars")
        owner = key.id if key is not None else ""
        task_id = str(uuid.uuid5(_IDEMPOTENCY_NS, f"{owner}\n{spec.kind}\n{idem_key}"))
    else:
        task_id = str(uuid.uuid4())

    refusal = await admit(request, task_id, replayable=idem_key is not None)
    if refusal is not None:
        return refusal
    try:
        data = await _stage_data_uris(request, task_id, data)
    except ValueError as exc:
        return error_response(422, "invalid_input", str(exc))
    except ResultStoreError as exc:
        return error_response(503, "storage_unavailable", f"could not stage inputs: {exc}")

    now = time.time()
    task = Task(
        task_id=task_id,
        job_type=spec.kind,
        status="pending",
        created_at=now,
        updated_at=now,
        resource=spec.resource,
        input=data,
        idempotency_key=idem_key,
        request_hash=body_hash,
        submitted_by=key.id if key is not None else None,
        callback_url=callback_url,
        reuse=reuse,
    )
    store = app[keys.STORE]
    replayed = False
    try:
        await store.create(task)
    except StaleTransition as stale:
        existing = stale.task
        if existing is None:
            return error_response(409, "conflict", "job id collision; retry")
        if existing.request_hash != body_hash:
            return error_response(
                422,
                "idempotency_key_reused",
                "Idempotency-Key was already used with a different request body",
            )
        replayed = idem_key is not None
        if existing.status != "pending":
            return _accepted(request, existing, replayed=replayed)
        # Still pending, so its message may never have been sent: the first
        # request's send failed, or this is the client retrying our own
        # PutItem whose answer was lost. A second message is harmless.
        task = existing
    except StoreError as exc:
        return error_response(503, "store_unavailable", f"task store unreachable: {exc}")

    try:
        await app[keys.QUEUE].send(spec.resource, task_id, spec.kind)
    except QueueError as exc:
        # Nothing half-written: the record goes, and the client may retry.
        try:
            await store.delete_pending(task_id)
        except StoreError:
            log.error("orphan_pending_task", job_id=task_id)
        return error_response(503, "queue_unavailable", f"job queue unreachable: {exc}")
    if not replayed:
        app[keys.METRICS].jobs_submitted.labels(spec.kind).inc()
        log.info("job_submitted", job_id=task_id, kind=spec.kind)
    return _accepted(request, task, replayed=replayed)


def _callback_problem(url: Any, settings: Any) -> str | None:
    if not isinstance(url, str):
        return "must be a string"
    if settings.webhooks.secret is None:
        return "webhooks are not configured on this worker (webhooks.secret)"
    if len(url) > 2048:
        return "longer than 2048 characters"
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return "must be an https:// URL"
    if parts.scheme == "http" and not settings.inputs.allow_http:
        return "http:// is not allowed here; use https://"
    return None


def _accepted(request: web.Request, task: Task, *, replayed: bool) -> web.Response:
    base = _base_url(request)
    view = {
        "job_id": task.task_id,
        "task_id": task.task_id,
        "kind": task.job_type,
        "status": task.status,
        "created_at": task.created_at,
        "status_url": f"{base}/api/v1/jobs/{task.task_id}",
    }
    headers = {"Location": str(view["status_url"])}
    if replayed:
        # The same answer as the first time; the header says it is a replay.
        headers["Idempotent-Replayed"] = "true"
    return web.json_response(view, status=202, headers=headers)


async def _stage_data_uris(
    request: web.Request, task_id: str, data: dict[str, Any]
) -> dict[str, Any]:
    """Move inline ``data:`` images to S3 so the task record stays small.

    DynamoDB items are capped at 400 KB; a frame as a data URI is megabytes.
    """
    results = request.app[keys.RESULTS]
    inputs = request.app[keys.SETTINGS].inputs
    max_bytes = inputs.max_bytes
    buckets = {results.bucket, *inputs.s3_buckets}

    async def walk(value: Any, path: str) -> Any:
        # The fetcher enforces these too; refusing here tells the client now.
        if isinstance(value, str) and value.startswith("http://") and not inputs.allow_http:
            raise ValueError(f"{path}: http:// inputs are not allowed here; use https://")
        if isinstance(value, str) and value.startswith("s3://"):
            bucket = value[5:].split("/", 1)[0]
            if bucket not in buckets:
                raise ValueError(f"{path}: bucket {bucket!r} is not one inputs may be read from")
            return value
        if isinstance(value, str) and value.startswith("data:"):
            try:
                fetched = parse_data_uri(value, path, max_bytes)
                mime = sniff_image(fetched.data, path, inputs.max_pixels)
            except Exception as exc:
                raise ValueError(str(exc)) from None
            key = results.input_key(task_id, path)
            await results.put(key, fetched.data, mime)
            return f"s3://{results.bucket}/{key}"
        if isinstance(value, dict):
            return {k: await walk(v, f"{path}.{k}" if path else k) for k, v in value.items()}
        if isinstance(value, list):
            return [await walk(v, f"{path}.{i}") for i, v in enumerate(value)]
        return value

    staged: dict[str, Any] = await walk(data, "")
    return staged


async def get_job(request: web.Request) -> web.Response:
    task_id = request.match_info["job_id"]
    try:
        task = await request.app[keys.STORE].get(task_id)
    except StoreError as exc:
        return error_response(503, "store_unavailable", f"task store unreachable: {exc}")
    if task is None or not may_read(request.get(REQUEST_KEY), task.submitted_by):
        # Another key's job is reported as missing, not as forbidden: ids of
        # other tenants' jobs are not confirmed to exist.
        return error_response(404, "not_found", f"no job {task_id}")
    # Presigned URLs expire; every stored file gets a fresh one on every read.
    view = await render_job(task, _base_url(request), request.app[keys.RESULTS])
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
    view = await render_job(task, _base_url(request), request.app[keys.RESULTS])
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
    checks: dict[str, str] = {}
    try:
        await app[keys.STORE].get("__health__")
        checks["dynamodb"] = "healthy"
    except StoreError:
        checks["dynamodb"] = "degraded"
    consumer = app[keys.CONSUMER]
    if consumer is not None and consumer.resources:
        checks["sqs"] = "degraded" if consumer.last_poll_ok is False else "healthy"
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
    status = "healthy" if all(v == "healthy" for v in checks.values()) else "degraded"
    body: dict[str, Any] = {"status": status, "checks": checks}
    if details:
        body["details"] = {name: "; ".join(texts) for name, texts in details.items()}
    return web.json_response(body)


@runtime_checkable
class _Explains(Protocol):
    """A handler that can say in words what its health and readiness found wrong."""

    def explain(self) -> Mapping[str, str]: ...


def _explain(handler: object) -> Mapping[str, str]:
    return handler.explain() if isinstance(handler, _Explains) else {}


async def ready(request: web.Request) -> web.Response:
    app = request.app
    consumer = app[keys.CONSUMER]
    reasons = []
    if app[keys.SETTINGS].consumer.enabled and (consumer is None or not consumer.running):
        reasons.append("consumer not running")
    if consumer is not None and consumer.draining:
        reasons.append("draining")
    if consumer is not None:
        # Ready when every queue this instance consumes has a handler that can
        # run now; a GPU instance whose ComfyUI is down is not ready.
        for resource in consumer.resources:
            if not app[keys.READINESS].ready(resource):
                reasons.append(f"no {resource} handler can run now")
    # A served kind that cannot run (its jobs are held) makes the instance
    # not ready too, with the reason: e.g. the model files its ComfyUI lacks.
    for kind, handler in app[keys.HANDLERS].items():
        if not handler.ready() and (why := _explain(handler)):
            reasons.append(f"{kind}: " + "; ".join(why.values()))
    if reasons:
        return web.json_response({"ready": False, "reasons": reasons}, status=503)
    return web.json_response({"ready": True})


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
