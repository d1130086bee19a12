"""The job API (v1): submit, status, cancel, list kinds; health, readiness, metrics."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from shortdrama_worker import keys
from shortdrama_worker.auth import REQUEST_KEY, may_read, may_submit
from shortdrama_worker.errors import InputError
from shortdrama_worker.handlers.base import FetchedInput
from shortdrama_worker.inputs import S3Object, parse_data_uri, probe_image, ref_scheme
from shortdrama_worker.netguard import AddressPolicy, UrlRefused, web_target
from shortdrama_worker.openapi import build_openapi
from shortdrama_worker.plugins import HandlerSpec
from shortdrama_worker.queue import QueueError
from shortdrama_worker.responses import error_response
from shortdrama_worker.results import ResultStoreError
from shortdrama_worker.settings import ApiKeySettings, Settings
from shortdrama_worker.store import StaleTransition, StoreError, Task

log = structlog.get_logger("shortdrama_worker.api")

# Submit bodies are JSON; ``multipart/form-data`` joins this set when uploads
# are supported (see ``_media_type_problem``).
_SUBMIT_MEDIA_TYPES = frozenset({"application/json"})
_REF_SCHEMES = frozenset({"http", "https", "s3", "data"})


def job_view(task: Task, base_url: str, result_url: str | None = None) -> dict[str, Any]:
    """The public shape of a job, shared by the job and the legacy task routes."""
    error = (
        {"code": task.error_code or "error", "message": task.error_message}
        if task.status == "failed" and task.error_message
        else None
    )
    webhook = (
        {"url": task.callback_url, "deliveries": task.webhook_deliveries or []}
        if task.callback_url
        else None
    )
    return {
        "job_id": task.task_id,
        "task_id": task.task_id,
        "kind": task.job_type,
        "status": task.status,
        "progress": task.progress,
        "webhook": webhook,
        "stage": task.stage,
        "result_url": result_url or task.result_url,
        "result": task.result,
        "error_message": task.error_message,
        "error": error,
        "attempts": task.attempts,
        "created_at": task.created_at,
        "updated_at": task.updated_at,
        "status_url": f"{base_url}/api/v1/jobs/{task.task_id}",
    }


def _base_url(request: web.Request) -> str:
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
                        "message": f"no handler for {slug!r}",
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
    media_problem = _media_type_problem(request)
    if media_problem:
        return error_response(415, "unsupported_media_type", media_problem)
    raw = await request.read()
    try:
        body = json.loads(raw or b"null")
    except RecursionError:
        return error_response(400, "malformed_json", "request body is nested too deeply")
    except ValueError as exc:
        return error_response(400, "malformed_json", f"request body is not valid JSON: {exc}")
    if not isinstance(body, dict):
        return error_response(400, "malformed_json", "request body must be a JSON object")
    # The callback URL is about delivery, not the handler's input.
    callback_url = body.pop("callback_url", None)
    if callback_url is not None:
        problem = _callback_problem(callback_url, app[keys.SETTINGS])
        if problem:
            errors = [{"field": "callback_url", "message": problem, "type": "value_error"}]
            return error_response(422, "invalid_input", f"callback_url: {problem}", fields=errors)
    # Accept the older orchestrator's envelope {"input": {...}} as well.
    payload = body["input"] if set(body) == {"input"} and isinstance(body["input"], dict) else body
    try:
        # Strict at the edge: "12" or true for an integer is refused, as the
        # published schema says, instead of being quietly converted.
        params = spec.cls.input_model.model_validate(payload, strict=True)
    except ValidationError as exc:
        errors = _field_errors(exc)
        summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return error_response(422, "invalid_input", summary, fields=errors)
    data = params.model_dump(mode="json", exclude_none=True)

    idem_key = request.headers.get("Idempotency-Key")
    body_hash = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    if idem_key is not None:
        idem_problem = _idempotency_key_problem(idem_key)
        if idem_problem:
            return error_response(422, "invalid_header", f"Idempotency-Key: {idem_problem}")
        task_id = derive_job_id(app[keys.JOB_ID_SECRET], key, spec.kind, idem_key)
    else:
        task_id = str(uuid.uuid4())

    staged: list[str] = []
    try:
        inline = await _check_references(request, data)
        data = await _stage_data_uris(request, task_id, data, inline, staged)
    except InputError as exc:
        return _input_refused(exc)
    except ResultStoreError as exc:
        await _discard(request, staged)
        return error_response(503, "storage_unavailable", f"could not stage inputs: {exc}")
    except StoreError as exc:
        return error_response(503, "store_unavailable", f"task store unreachable: {exc}")

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
    )
    store = app[keys.STORE]
    replayed = False
    try:
        await store.create(task)
    except StaleTransition as stale:
        # Not our record: what this request staged belongs to nobody.
        await _discard(request, staged)
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
        await _discard(request, staged)
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


def _media_type_problem(request: web.Request) -> str | None:
    """Why the body's declared type is not one submit reads, or ``None``.

    A missing Content-Type is read as JSON, as older clients send it.
    """
    if "Content-Type" not in request.headers:
        return None
    media = request.content_type.lower()
    if media in _SUBMIT_MEDIA_TYPES or (
        media.startswith("application/") and media.endswith("+json")
    ):
        return None
    return f"Content-Type {media!r} is not accepted; send application/json"


def _idempotency_key_problem(value: str) -> str | None:
    if not 1 <= len(value) <= 255:
        return "must be 1–255 characters"
    # Visible ASCII and spaces, as the document says: other bytes arrive as
    # undecodable text (lone surrogates) that cannot even be hashed.
    if not all(" " <= c <= "~" for c in value):
        return "must be printable ASCII"
    return None


def derive_job_id(secret: bytes, key: ApiKeySettings | None, kind: str, idem_key: str) -> str:
    """The job id an Idempotency-Key maps to, for this API key and kind.

    Deterministic, so a repeated submit hits the same record and the store's
    conditional put settles the race; keyed with a server secret (HMAC), so
    nobody can compute another tenant's job id from its Idempotency-Key.
    """
    owner = key.id if key is not None else ""
    message = f"{owner}\n{kind}\n{idem_key}".encode()
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def _input_refused(exc: InputError) -> web.Response:
    errors = [{"field": exc.field, "message": exc.reason, "type": exc.code}]
    return error_response(422, "invalid_input", exc.message, fields=errors)


def _callback_problem(url: Any, settings: Settings) -> str | None:
    if not isinstance(url, str):
        return "must be a string"
    if settings.webhooks.secret is None:
        return "webhooks are not configured on this worker (webhooks.secret)"
    if len(url) > 2048:
        return "longer than 2048 characters"
    if ref_scheme(url) not in ("https", "http"):
        return "must be an https:// URL"
    if ref_scheme(url) == "http" and not settings.inputs.allow_http:
        return "http:// is not allowed here; use https://"
    try:
        # The same normalisation and address rules the delivery applies.
        target = web_target(url, allow_http=True)
    except UrlRefused as exc:
        return exc.reason
    refused = AddressPolicy(settings.inputs.allow_networks).url_refusal(target)
    return f"{target.raw_host} refused: {refused}" if refused else None


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


def _references(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every string in the input that names an input by a scheme we fetch, with its path."""
    if isinstance(value, str):
        if ref_scheme(value) in _REF_SCHEMES:
            yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _references(v, f"{path}.{k}" if path else k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _references(v, f"{path}.{i}")


async def _check_references(request: web.Request, data: dict[str, Any]) -> dict[str, FetchedInput]:
    """Refuse now whatever input reference can be refused without fetching it.

    The same rules as the fetcher (``InputRules``), plus what only the API
    knows: which key asks, for ``s3://`` objects it must own. Returns the
    decoded ``data:`` URIs by path, for staging.
    """
    rules = request.app[keys.INPUT_RULES]
    limits = request.app[keys.SETTINGS].inputs
    inline: dict[str, FetchedInput] = {}
    for path, ref in _references(data):
        if ref_scheme(ref) == "data":
            fetched = parse_data_uri(ref, path, limits.max_bytes)
            probe_image(fetched.data, path, limits.max_pixels)  # the header tells enough
            inline[path] = fetched
            continue
        found = rules.check(ref, path)
        if found is not None and not await _may_reference(request, found):
            raise InputError(
                path,
                f"{ref} is not a staged input or result of a job this API key may read",
                code="forbidden",
            )
    return inline


async def _may_reference(request: web.Request, obj: S3Object) -> bool:
    """A results-bucket object is readable by the keys that may read its job."""
    if obj.job_id is None:
        return True  # a bucket the operator listed for every key
    owner = await request.app[keys.STORE].get(obj.job_id)
    # A job that does not exist and another key's job answer alike.
    return owner is not None and may_read(request.get(REQUEST_KEY), owner.submitted_by)


async def _stage_data_uris(
    request: web.Request,
    task_id: str,
    data: dict[str, Any],
    inline: dict[str, FetchedInput],
    staged: list[str],
) -> dict[str, Any]:
    """Move inline ``data:`` images to S3 so the task record stays small.

    DynamoDB items are capped at 400 KB; a frame as a data URI is megabytes.
    Keys are unique to this request (``staged`` collects them), so a submit
    that is then refused has touched no other job's objects.
    """
    if not inline:
        return data
    results = request.app[keys.RESULTS]
    submit_id = uuid.uuid4().hex

    async def walk(value: Any, path: str) -> Any:
        if path in inline and isinstance(value, str):
            fetched = inline[path]
            key = results.input_key(task_id, submit_id, path)
            staged.append(key)
            await results.put(key, fetched.data, fetched.content_type or "application/octet-stream")
            return f"s3://{results.bucket}/{key}"
        if isinstance(value, dict):
            return {k: await walk(v, f"{path}.{k}" if path else k) for k, v in value.items()}
        if isinstance(value, list):
            return [await walk(v, f"{path}.{i}") for i, v in enumerate(value)]
        return value

    result: dict[str, Any] = await walk(data, "")
    return result


async def _discard(request: web.Request, staged: list[str]) -> None:
    """Remove what a refused submit staged; left-overs are only unreferenced garbage."""
    if not staged:
        return
    try:
        await request.app[keys.RESULTS].delete(staged)
    except ResultStoreError as exc:
        log.warning("staged_inputs_not_removed", error=str(exc), count=len(staged))


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
    url = None
    if task.result_key and task.status == "completed":
        # Presigned URLs expire; hand out a fresh one on every read.
        url = await request.app[keys.RESULTS].url(task.result_key)
    return web.json_response(job_view(task, _base_url(request), url))


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
    request.app[keys.RUNNER].cancel_local(task_id, "cancelled")
    request.app[keys.WEBHOOKS].schedule(task)  # only if it is already cancelled
    return web.json_response(job_view(task, _base_url(request)), status=202)


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
    for kind, handler in app[keys.HANDLERS].items():
        try:
            for name, state in (await handler.health()).items():
                checks[name] = state if checks.get(name) != "degraded" else "degraded"
        except Exception as exc:
            log.warning("health_check_failed", kind=kind, error=str(exc))
            checks[kind] = "degraded"
    status = "healthy" if all(v == "healthy" for v in checks.values()) else "degraded"
    return web.json_response({"status": status, "checks": checks})


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
            if not consumer.resource_ready(resource):
                reasons.append(f"no {resource} handler can run now")
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
