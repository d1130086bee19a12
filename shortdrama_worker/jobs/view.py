"""The public shape of a job, and the URLs in it rendered when it is read.

A result holds object keys, not URLs: a ``StoredResult`` a handler put in its
result is stored as ``{"$object": key}`` and rendered into a fresh URL
(presigned, or on the CDN) every time the job is read by the API or sent to a
webhook. A job read a week later still has working links for every file.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from shortdrama_worker.aws.results import ResultStore
from shortdrama_worker.aws.store import Task
from shortdrama_worker.contract import StoredResult

OBJECT_MARK = "$object"

UrlOf = Callable[[str], Awaitable[str]]


def freeze_result(value: Any) -> Any:
    """``value`` as it is stored: every ``StoredResult`` replaced by its key."""
    if isinstance(value, StoredResult):
        return {OBJECT_MARK: value.key}
    if isinstance(value, Mapping):
        return {str(k): freeze_result(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [freeze_result(v) for v in value]
    return value


def files_of(stored: list[StoredResult]) -> list[dict[str, Any]]:
    """The ``files`` list of a result: every file the job stored, with a link."""
    return [
        {
            "url": s,
            "key": s.key,
            "content_type": s.content_type,
            "size": s.size,
            "manifest_id": s.manifest_id,
        }
        for s in stored
    ]


def manifest_id_of(task: Task) -> str | None:
    """The C2PA manifest id of the job's primary result file, if it was signed."""
    files = (task.result or {}).get("files")
    if not task.result_key or not isinstance(files, list):
        return None
    for entry in files:
        if isinstance(entry, Mapping) and entry.get("key") == task.result_key:
            manifest = entry.get("manifest_id")
            return str(manifest) if manifest else None
    return None


async def render_urls(value: Any, url_of: UrlOf) -> Any:
    """``value`` as it is shown: every stored key replaced by a fresh URL."""
    if isinstance(value, Mapping):
        if set(value) == {OBJECT_MARK} and isinstance(value[OBJECT_MARK], str):
            return await url_of(value[OBJECT_MARK])
        return {k: await render_urls(v, url_of) for k, v in value.items()}
    if isinstance(value, list):
        return [await render_urls(v, url_of) for v in value]
    return value


def job_view(task: Task, base_url: str) -> dict[str, Any]:
    """The public shape of a job as stored (URLs not yet rendered)."""
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
        "result_url": task.result_url,
        "manifest_id": manifest_id_of(task),
        "result": task.result,
        "error_message": task.error_message,
        "error": error,
        "attempts": task.attempts,
        "cost": task.cost,
        "reused_from": task.reused_from,
        "created_at": task.created_at,
        "updated_at": task.updated_at,
        "status_url": f"{base_url}/api/v1/jobs/{task.task_id}",
    }


async def render_job(task: Task, base_url: str, results: ResultStore) -> dict[str, Any]:
    """The job as a client sees it now, with fresh URLs for every stored file."""
    view = job_view(task, base_url)
    if task.status != "completed":
        return view
    if task.result_key:
        view["result_url"] = await results.url(task.result_key)
    view["result"] = await render_urls(task.result, results.url)
    return view
