"""The detailed shape of a job: the public view plus inputs, files and timings.

URLs are rendered when read (presigned or CDN), never taken from the record,
so an old record still yields working links.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from shortdrama_worker import keys
from shortdrama_worker.aws.store import Task
from shortdrama_worker.jobs.view import render_job
from shortdrama_worker.web.api import base_url


async def detailed_view(request: web.Request, task: Task) -> dict[str, Any]:
    """The rendered job with the job's inputs, every result file and phase timings."""
    results = request.app[keys.RESULTS]
    view = await render_job(task, base_url(request), results)
    view["input"] = task.input
    view["input_urls"] = await _input_urls(request, task.input)
    files = []
    for file in (task.result or {}).get("files", []) if task.status == "completed" else []:
        if isinstance(file, dict) and isinstance(file.get("key"), str):
            files.append(
                {
                    "key": file["key"],
                    "name": file["key"].rsplit("/", 1)[-1],
                    "content_type": file.get("content_type"),
                    "size": file.get("size"),
                    "url": await results.url(file["key"]),
                }
            )
    view["files"] = files
    view["timings"] = _timings(task)
    return view


async def _input_urls(request: web.Request, data: dict[str, Any]) -> dict[str, str]:
    """Viewable URLs of the input images: staged ``s3://`` objects presigned, https as is."""
    results = request.app[keys.RESULTS]
    prefix = f"s3://{results.bucket}/"
    found: dict[str, str] = {}

    async def walk(value: Any, path: str) -> None:
        if isinstance(value, str) and value.startswith(prefix):
            found[path] = await results.url(value[len(prefix) :])
        elif isinstance(value, str) and value.startswith("https://"):
            found[path] = value
        elif isinstance(value, dict):
            for k, v in value.items():
                await walk(v, f"{path}.{k}" if path else k)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                await walk(v, f"{path}.{i}")

    await walk(data, "")
    return found


def _timings(task: Task) -> dict[str, float | None]:
    """Queue wait and run time of the last attempt, as far as the record knows them."""
    queued = run = total = None
    if task.started_at is not None:
        queued = round(task.started_at - task.created_at, 3)
        if task.finished_at is not None:
            run = round(task.finished_at - task.started_at, 3)
    if task.finished_at is not None:
        total = round(task.finished_at - task.created_at, 3)
    return {"queued_s": queued, "run_s": run, "total_s": total}
