"""Submitting a job: validate, derive its id, stage inputs, create the record, send the message.

The route handler parses the HTTP request and maps ``SubmitError`` to a
response; everything a submit means happens here, in this order:

1. the callback URL and the input are validated (strictly, with the host's
   reference policy), so a 422 names every bad field;
2. the job id is random, or an HMAC of the key, kind and ``Idempotency-Key``;
3. every reference field (and only those) is checked: inline ``data:`` values
   are decoded and their headers read, ``s3://`` objects must be the key's
   own or in a bucket the operator listed, URLs must pass the address policy;
4. inline values are staged to S3 under keys unique to this request, so a
   refused submit touches no other job's objects (and its own are removed);
5. the record is created with a conditional write (a replay of the same
   ``Idempotency-Key`` and body finds it); then the message is sent, and if
   that fails the record is removed again: nothing is left half-written.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import structlog
from pydantic import BaseModel, ValidationError

from shortdrama_worker.access import may_read
from shortdrama_worker.aws.queue import JobQueue, QueueError
from shortdrama_worker.aws.results import ResultStore, ResultStoreError
from shortdrama_worker.aws.store import StaleTransition, StoreError, Task, TaskStore
from shortdrama_worker.contract import (
    IMAGE_TYPES,
    FetchedInput,
    FoundReference,
    InputError,
    check_file,
    iter_references,
    sniff_content_type,
)
from shortdrama_worker.contract.fields import REFERENCE_CHECK
from shortdrama_worker.inputs.fetch import (
    InputRules,
    S3Object,
    parse_data_uri,
    probe_image,
    ref_scheme,
    reference_problem,
)
from shortdrama_worker.inputs.netguard import AddressPolicy, UrlRefused, web_target
from shortdrama_worker.jobs.limits import Admission, LimitExceeded, Limits
from shortdrama_worker.jobs.reuse import reuse_flag
from shortdrama_worker.metrics import Metrics
from shortdrama_worker.plugins import HandlerSpec
from shortdrama_worker.settings import ApiKeySettings, Settings

log = structlog.get_logger("shortdrama_worker.jobs.submission")

Path = tuple[str | int, ...]


class SubmitError(Exception):
    """A submit refused; ``status``/``code`` for the response, ``fields`` for a 422."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        fields: list[dict[str, Any]] | None = None,
        *,
        retry_after_s: int | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields
        self.retry_after_s = retry_after_s
        """For a ``429``: when a retry may succeed (``Retry-After``)."""
        self.extra = extra
        """More members of the error body (``limit`` for a ``429``)."""

    @classmethod
    def invalid(cls, field: str, message: str, kind: str = "value_error") -> SubmitError:
        errors = [{"field": field, "message": message, "type": kind}]
        return cls(422, "invalid_input", f"{field}: {message}", errors)


@dataclass(frozen=True)
class Accepted:
    """The job a submit created, or the one an idempotent replay found."""

    task: Task
    replayed: bool


@dataclass(frozen=True)
class Request:
    """What a submit asks: the kind, who asks, the body as parsed, its Idempotency-Key."""

    spec: HandlerSpec
    key: ApiKeySettings | None
    body: dict[str, Any]
    idempotency_key: str | None = None

    @property
    def owner(self) -> str | None:
        return self.key.id if self.key is not None else None


class Submitter:
    """Turns a submit request into a queued job, or a ``SubmitError``."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: TaskStore,
        queue: JobQueue,
        results: ResultStore,
        rules: InputRules,
        metrics: Metrics,
        job_id_secret: bytes,
        limits: Limits,
    ) -> None:
        self.settings = settings
        self.store = store
        self.queue = queue
        self.results = results
        self.rules = rules
        self.metrics = metrics
        self.job_id_secret = job_id_secret
        self.limits = limits

    async def submit(self, request: Request) -> Accepted:
        body = dict(request.body)
        # About delivery and answering, not the handler's input.
        callback_url = self._callback(body.pop("callback_url", None))
        try:
            reuse = reuse_flag(body)
        except ValueError as exc:
            raise SubmitError.invalid("reuse", str(exc), "bool_type") from None
        params = validate_input(request.spec, _payload(body))
        task_id = self._job_id(request)
        inline = await self._check_references(params, request.key)
        admission = await self._admit(request, task_id)
        accepted: Accepted | None = None
        try:
            accepted = await self._queue_job(request, task_id, params, inline, callback_url, reuse)
            return accepted
        finally:
            if admission is not None and (accepted is None or accepted.replayed):
                # This submit made no job: what it took goes back.
                await self.limits.refund(admission)

    async def _admit(self, request: Request, task_id: str) -> Admission | None:
        """Take the key's concurrency slot and daily quota for the job; a ``429`` if spent."""
        try:
            return await self.limits.admit(request.owner, task_id)
        except LimitExceeded as refusal:
            # A retry of an accepted job (same Idempotency-Key) is answered, not refused.
            if request.idempotency_key is not None and await self._exists(task_id):
                return None
            raise too_many(refusal, self.metrics) from None
        except StoreError as exc:
            raise SubmitError(503, "store_unavailable", f"task store unreachable: {exc}") from None

    async def _exists(self, task_id: str) -> bool:
        try:
            return await self.store.get(task_id) is not None
        except StoreError:
            return False

    async def _queue_job(
        self,
        request: Request,
        task_id: str,
        params: BaseModel,
        inline: dict[Path, FetchedInput],
        callback_url: str | None,
        reuse: bool | None,
    ) -> Accepted:
        data = params.model_dump(mode="json")
        body_hash = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
        staged: list[str] = []
        try:
            data = await self._stage(task_id, data, inline, staged)
        except ResultStoreError as exc:
            await self._discard(staged)
            raise SubmitError(
                503, "storage_unavailable", f"could not stage inputs: {exc}"
            ) from None
        now = time.time()
        task = Task(
            task_id=task_id,
            job_type=request.spec.kind,
            status="pending",
            created_at=now,
            updated_at=now,
            resource=request.spec.resource,
            input=data,
            idempotency_key=request.idempotency_key,
            request_hash=body_hash,
            submitted_by=request.owner,
            callback_url=callback_url,
            reuse=reuse,
        )
        accepted = await self._create(task, staged)
        if accepted.task.status == "pending":
            await self._send(accepted, request.spec)
        if not accepted.replayed:
            self.metrics.jobs_submitted.labels(request.spec.kind).inc()
            log.info("job_submitted", job_id=task_id, kind=request.spec.kind)
        return accepted

    def _callback(self, url: Any) -> str | None:
        """The callback URL is about delivery, not the handler's input."""
        if url is None:
            return None
        problem = callback_problem(url, self.settings)
        if problem:
            raise SubmitError.invalid("callback_url", problem)
        assert isinstance(url, str)
        return url

    def _job_id(self, request: Request) -> str:
        if request.idempotency_key is None:
            return str(uuid.uuid4())
        problem = idempotency_key_problem(request.idempotency_key)
        if problem:
            raise SubmitError(422, "invalid_header", f"Idempotency-Key: {problem}")
        return derive_job_id(
            self.job_id_secret, request.key, request.spec.kind, request.idempotency_key
        )

    async def _check_references(
        self, params: BaseModel, key: ApiKeySettings | None
    ) -> dict[Path, FetchedInput]:
        """Refuse now whatever reference can be refused without fetching it.

        The fetcher applies the same rules (``InputRules``) at run time; only
        the API knows which key asks, for the ``s3://`` objects it must own.
        Returns the decoded inline values by path, for staging.
        """
        inline: dict[Path, FetchedInput] = {}
        for found in iter_references(params):
            try:
                if ref_scheme(found.value) == "data":
                    inline[found.path] = self._inline(found)
                    continue
                obj = self.rules.check(found.value, found.field)
                if obj is not None and not await self._may_reference(obj, key):
                    raise InputError(
                        found.field,
                        f"{found.value} is not a staged input or result of a job this API key "
                        "may read",
                        code="forbidden",
                    )
            except InputError as exc:
                raise SubmitError.invalid(exc.field, exc.reason, exc.code) from None
        return inline

    def _inline(self, found: FoundReference) -> FetchedInput:
        """A ``data:`` value decoded, its real type sniffed; images by their header only."""
        limits = self.settings.inputs
        reference = found.reference
        max_bytes = min(reference.max_bytes or limits.max_bytes, limits.max_bytes)
        fetched = parse_data_uri(found.value, found.field, max_bytes, kind=reference.kind)
        if reference.kind == "image":
            probe_image(fetched.data, found.field, limits.max_pixels)
            sniffed = sniff_content_type(fetched.data)
            content_type = sniffed if sniffed in IMAGE_TYPES else fetched.content_type
        else:
            # The size was bounded by parse_data_uri; the type is the file rule's.
            content_type = check_file(fetched.data, field=found.field, accept=reference.accept)
        return FetchedInput(fetched.data, content_type, fetched.source)

    async def _may_reference(self, obj: S3Object, key: ApiKeySettings | None) -> bool:
        """A results-bucket object is readable by the keys that may read its job."""
        if obj.job_id is None:
            return True  # a bucket the operator listed for every key
        owner = await self.store.get(obj.job_id)
        # A job that does not exist and another key's job answer alike.
        return owner is not None and may_read(key, owner.submitted_by)

    async def _stage(
        self,
        task_id: str,
        data: dict[str, Any],
        inline: dict[Path, FetchedInput],
        staged: list[str],
    ) -> dict[str, Any]:
        """Move inline values to S3 so the task record stays small (DynamoDB: 400 KB).

        Keys are unique to this request (``staged`` collects them), so a submit
        that is then refused has touched no other job's objects.
        """
        submit_id = uuid.uuid4().hex
        for path, fetched in inline.items():
            field = ".".join(str(p) for p in path)
            key = self.results.input_key(task_id, submit_id, field)
            staged.append(key)
            content_type = fetched.content_type or "application/octet-stream"
            await self.results.put(key, fetched.data, content_type)
            _set(data, path, f"s3://{self.results.bucket}/{key}")
        return data

    async def _create(self, task: Task, staged: list[str]) -> Accepted:
        """Create the record; an idempotent replay finds the first one instead."""
        try:
            await self.store.create(task)
        except StaleTransition as stale:
            # Not our record: what this request staged belongs to nobody.
            await self._discard(staged)
            return self._replay(task, stale.task)
        except StoreError as exc:
            await self._discard(staged)
            raise SubmitError(503, "store_unavailable", f"task store unreachable: {exc}") from None
        return Accepted(task, replayed=False)

    @staticmethod
    def _replay(task: Task, existing: Task | None) -> Accepted:
        if existing is None:
            raise SubmitError(409, "conflict", "job id collision; retry")
        if existing.request_hash != task.request_hash:
            raise SubmitError(
                422,
                "idempotency_key_reused",
                "Idempotency-Key was already used with a different request body",
            )
        # Still pending, its message may never have been sent (the first
        # request's send failed, or this retries our own PutItem whose answer
        # was lost): it is sent again, which is harmless.
        return Accepted(existing, replayed=task.idempotency_key is not None)

    async def _send(self, accepted: Accepted, spec: HandlerSpec) -> None:
        task = accepted.task
        try:
            await self.queue.send(spec.resource, task.task_id, spec.kind)
        except QueueError as exc:
            # Nothing half-written: the record goes, and the client may retry.
            try:
                await self.store.delete_pending(task.task_id)
            except StoreError:
                log.error("orphan_pending_task", job_id=task.task_id)
            raise SubmitError(503, "queue_unavailable", f"job queue unreachable: {exc}") from None

    async def _discard(self, staged: list[str]) -> None:
        """Remove what a refused submit staged; left-overs are only unreferenced garbage."""
        if not staged:
            return
        try:
            await self.results.delete(staged)
        except ResultStoreError as exc:
            log.warning("staged_inputs_not_removed", error=str(exc), count=len(staged))


def too_many(refusal: LimitExceeded, metrics: Metrics) -> SubmitError:
    """The ``429`` for a spent limit; counted by limit, never by key."""
    metrics.submits_refused.labels(refusal.limit).inc()
    log.info("submit_refused", limit=refusal.limit, retry_after_s=refusal.retry_after_s)
    return SubmitError(
        429,
        "limit_exceeded",
        refusal.message,
        retry_after_s=refusal.retry_after_s,
        limit=refusal.limit,
    )


def validate_input(spec: HandlerSpec, payload: Any) -> BaseModel:
    """The handler's input model, validated as the API does; ``SubmitError`` lists every field.

    Strict at the edge: ``"12"`` or ``true`` for an integer is refused, as the
    published schema says, instead of being quietly converted.
    """
    try:
        return spec.cls.input_model.model_validate(
            payload, strict=True, context={REFERENCE_CHECK: reference_problem}
        )
    except ValidationError as exc:
        errors = field_errors(exc)
        summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        raise SubmitError(422, "invalid_input", summary, errors) from None


def field_errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {
            "field": ".".join(str(p) for p in err["loc"]) or "(body)",
            "message": err["msg"],
            "type": err["type"],
        }
        for err in exc.errors(include_url=False, include_input=False)
    ]


def _payload(body: dict[str, Any]) -> dict[str, Any]:
    """The handler's input: the body, or the older orchestrator's ``{"input": {...}}``."""
    if set(body) == {"input"} and isinstance(body["input"], dict):
        inner: dict[str, Any] = body["input"]
        return inner
    return body


def _set(data: Any, path: Path, value: str) -> None:
    for part in path[:-1]:
        data = data[part]
    data[path[-1]] = value


def idempotency_key_problem(value: str) -> str | None:
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


def callback_problem(url: Any, settings: Settings) -> str | None:
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
