"""Paying once for a repeated request: answering a job from an earlier identical one.

A job may be answered from an earlier completed job when the kind declares
itself ``deterministic`` or the client sent ``"reuse": true`` (and
``"reuse": false`` always runs). Two jobs are the same request when their
*reuse key* is: a SHA-256 over

* the kind,
* the validated parameters, each input reference replaced by the SHA-256 of
  the bytes it points to (the content counts, not the URL: a presigned URL
  that changes every time still matches; the same URL with new content does
  not),
* the handler's distribution and version and a digest of its settings (a new
  model or prompt in the configuration means a new result).

The key is computed by the runner, after the claim and before the handler
runs, because hashing an ``https://`` input means fetching it, which the
submit path never does. The bytes fetched for the key are handed to the
handler, so a job that does run fetches each input once. A reused job still
passes through the queue (milliseconds), but calls no handler and no provider.

Each completed job with a key leaves a pointer item ``#reuse/<scope>/<key>``
beside the task records (no ``status``, so no index lists it; TTL removes
it). The scope is the submitting key's id, or ``*`` when the operator lets
keys share results, so one key never receives another's result unless
allowed.
"""

from __future__ import annotations

import hashlib
import json
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import structlog
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel

from shortdrama_worker import __version__
from shortdrama_worker.aws.store import StoreError, Task, TaskStore
from shortdrama_worker.contract.fields import iter_references
from shortdrama_worker.edge_settings import ReuseSettings
from shortdrama_worker.jobs.limits import ANONYMOUS
from shortdrama_worker.plugins import AnyHandler, HandlerSpec

log = structlog.get_logger("shortdrama_worker.jobs.reuse")

PREFIX = "#reuse/"
SHARED = "*"


def reuse_flag(body: dict[str, Any]) -> bool | None:
    """Take the client's ``"reuse"`` field out of a submit body; ``ValueError`` if not a boolean."""
    value = body.pop("reuse", None)
    if value is not None and not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def handler_version(spec: HandlerSpec, handler: AnyHandler) -> str:
    """What produced a result: the distribution, its version, the class and its settings."""
    try:
        dist_version = version(spec.distribution)
    except (PackageNotFoundError, ValueError):
        dist_version = f"host-{__version__}"
    settings = handler.env.settings.model_dump_json()
    settings_digest = hashlib.sha256(settings.encode()).hexdigest()[:16]
    cls = spec.cls
    return (
        f"{spec.distribution}=={dist_version}:{cls.__module__}.{cls.__qualname__}:{settings_digest}"
    )


def reuse_key(kind: str, params: dict[str, Any], producer: str) -> str:
    """The key of a request whose references were already replaced by content digests."""
    canonical = json.dumps(
        {"kind": kind, "params": params, "producer": producer},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def with_digests(params: BaseModel, digests: dict[tuple[str | int, ...], str]) -> dict[str, Any]:
    """The parameters as JSON with each reference replaced by ``sha256:<digest>``."""
    data: Any = params.model_dump(mode="json", exclude_none=True)
    for path, digest in digests.items():
        holder = data
        for part in path[:-1]:
            holder = holder[part]
        holder[path[-1]] = f"sha256:{digest}"
    result: dict[str, Any] = data
    return result


class Reuser:
    """Decides whether a job may reuse a result, finds it, and remembers new ones."""

    def __init__(self, settings: ReuseSettings, store: TaskStore, client: Any) -> None:
        self.settings = settings
        self.store = store
        self._db = client
        self.table = store.table

    def wanted(self, task: Task, handler: AnyHandler) -> bool:
        if not self.settings.enabled or task.reuse is False:
            return False
        return task.reuse is True or bool(getattr(handler, "deterministic", False))

    def scope(self, submitted_by: str | None) -> str:
        return SHARED if self.settings.share_across_keys else (submitted_by or ANONYMOUS)

    async def key_for(
        self, task: Task, spec: HandlerSpec, handler: AnyHandler, params: BaseModel, prefetch: Any
    ) -> str:
        """The job's reuse key; ``prefetch(ref, field, kind)`` fetches (and keeps) an input."""
        digests: dict[tuple[str | int, ...], str] = {}
        for found in iter_references(params):
            fetched = await prefetch(found.value, found.field, found.reference.kind)
            digests[found.path] = hashlib.sha256(fetched.data).hexdigest()
        return reuse_key(
            task.job_type, with_digests(params, digests), handler_version(spec, handler)
        )

    async def find(self, task: Task, key: str) -> Task | None:
        """A completed job of the same request, young enough and visible to this job's key."""
        try:
            reply = await self._db.get_item(
                TableName=self.table,
                Key={"task_id": {"S": self._pointer(task.submitted_by, key)}},
                ConsistentRead=True,
            )
            source_id = reply.get("Item", {}).get("source", {}).get("S")
            source = await self.store.get(source_id) if source_id else None
        except (ClientError, BotoCoreError, OSError, StoreError) as exc:
            log.warning("reuse_lookup_failed", error=str(exc))
            return None
        if source is None or source.status != "completed" or source.result is None:
            return None
        if source.reuse_key != key or source.task_id == task.task_id:
            return None
        if time.time() - (source.finished_at or 0) > self.settings.max_age_s:
            return None
        if not self.settings.share_across_keys and source.submitted_by != task.submitted_by:
            return None
        return source

    async def remember(self, task: Task) -> None:
        """Point the job's reuse key at it, for the requests that repeat it."""
        if task.status != "completed" or not task.reuse_key or task.reused_from:
            return
        try:
            await self._db.put_item(
                TableName=self.table,
                Item={
                    "task_id": {"S": self._pointer(task.submitted_by, task.reuse_key)},
                    "source": {"S": task.task_id},
                    "finished_at": {"N": str(task.finished_at or time.time())},
                    "expires_at": {"N": str(int(time.time()) + self.settings.max_age_s + 86400)},
                },
            )
        except (ClientError, BotoCoreError, OSError) as exc:
            log.warning("reuse_not_recorded", error=str(exc))

    def _pointer(self, submitted_by: str | None, key: str) -> str:
        return f"{PREFIX}{self.scope(submitted_by)}/{key}"
