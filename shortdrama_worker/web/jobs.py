"""Job list, ``Prefer: wait=N`` and the live event stream of one job."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from shortdrama_worker import keys
from shortdrama_worker.aws.store import StoreError
from shortdrama_worker.web import api
from shortdrama_worker.web.auth import REQUEST_KEY
from shortdrama_worker.web.listing import ListingError, list_jobs, parse_query
from shortdrama_worker.web.responses import error_response
from shortdrama_worker.web.views import detailed_view

log = structlog.get_logger("shortdrama_worker.web.jobs")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*\"?(\d+)\"?", re.I)
_KEEPALIVE_S = 15.0


def wanted_wait(request: web.Request) -> int | None:
    """Seconds asked for by ``Prefer: wait=N`` (RFC 7240), bounded by ``api.max_wait_s``."""
    for header in request.headers.getall("Prefer", []):
        match = _WAIT.search(header)
        if match:
            return min(int(match[1]), request.app[keys.SETTINGS].api.max_wait_s)
    return None


async def _finished_view(request: web.Request, job_id: str, wait_s: int) -> web.Response | None:
    """200 with the job if it ends within ``wait_s``; ``None`` to answer as usual."""
    task = await request.app[keys.WATCH].until_finished(job_id, wait_s)
    if task is None or not task.terminal:
        return None
    response = web.json_response(await detailed_view(request, task))
    response.headers["Preference-Applied"] = f"wait={wait_s}"
    return response


@web.middleware
async def submit_and_wait(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Around the API's submit and status routes: ``Prefer: wait`` and unconsumed kinds.

    A middleware rather than edits to those routes, so they stay as they are.
    """
    target = request.match_info.handler
    if target is api.submit:
        return await _submit(request, handler)
    if target is api.get_job:
        return await _get(request, handler)
    return await handler(request)


async def _submit(request: web.Request, handler: Handler) -> web.StreamResponse:
    refusal = unconsumed_kind(request)
    if refusal is not None:
        return refusal
    response = await handler(request)
    wait_s = wanted_wait(request)
    if wait_s is None or response.status != 202 or not isinstance(response, web.Response):
        return response
    job_id = json.loads(response.body)["job_id"]  # type: ignore[arg-type]
    try:
        finished = await _finished_view(request, job_id, wait_s)
    except StoreError:
        return response  # accepted all the same; the client polls
    if finished is None:
        response.headers["Preference-Applied"] = f"wait={wait_s}"
        return response
    if "Location" in response.headers:
        finished.headers["Location"] = response.headers["Location"]
    return finished


async def _get(request: web.Request, handler: Handler) -> web.StreamResponse:
    wait_s = wanted_wait(request)
    if wait_s is None:
        return await handler(request)
    job_id = request.match_info["job_id"]
    try:
        # Missing, another key's, or the store down: the route itself answers that.
        if not isinstance(await api.readable_job(request, job_id), web.Response):
            await request.app[keys.WATCH].until_finished(job_id, wait_s)
    except StoreError:
        pass  # the wait's own reads failed: the route itself reports the outage
    response = await handler(request)
    response.headers["Preference-Applied"] = f"wait={wait_s}"
    return response


def unconsumed_kind(request: web.Request) -> web.Response | None:
    """On the embedded endpoint this daemon is the only consumer: refuse what it cannot run."""
    settings = request.app[keys.SETTINGS]
    if not settings.local.embedded_aws:
        return None
    spec = request.app[keys.REGISTRY].by_slug.get(request.match_info["slug"])
    if spec is None:
        return None
    consumed = settings.consumer.consume if settings.consumer.enabled else []
    if spec.resource in consumed:
        return None
    why = (
        f"consumer.consume is {json.dumps(consumed)}"
        if settings.consumer.enabled
        else "consumer.enabled is false"
    )
    return error_response(
        503,
        "queue_not_consumed",
        f"{spec.kind!r} runs on the {spec.resource} queue, which nothing consumes here "
        f"({why}); add {spec.resource!r} to consumer.consume "
        f"(SHORTDRAMA_CONSUMER__CONSUME) so its jobs do not wait forever",
    )


async def jobs_index(request: web.Request) -> web.Response:
    key = request.get(REQUEST_KEY)
    scope = None if key is None or key.read_all else key.id
    try:
        query = parse_query(request.query, scope)
        tasks, cursor = await list_jobs(
            request.app[keys.STORE], query, request.query.get("cursor") or None
        )
    except ListingError as exc:
        return error_response(400, "invalid_query", str(exc))
    except StoreError as exc:
        return error_response(503, "store_unavailable", f"task store unreachable: {exc}")
    jobs = [await detailed_view(request, task) for task in tasks]
    return web.json_response({"jobs": jobs, "count": len(jobs), "next_cursor": cursor})


async def job_events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: one ``job`` event per change, the last at a terminal status."""
    job_id = request.match_info["job_id"]
    watch = request.app[keys.WATCH]
    found = await api.readable_job(request, job_id)
    if isinstance(found, web.Response):
        return found
    stream = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # proxies must pass each event on at once
        }
    )
    await stream.prepare(request)
    changes = watch.follow(job_id)
    try:
        while True:
            try:
                task = await asyncio.wait_for(anext(changes), _KEEPALIVE_S)
            except TimeoutError:
                await stream.write(b": keep-alive\n\n")
                continue
            except StopAsyncIteration:
                break
            if task is None:
                await stream.write(b'event: gone\ndata: {"status": "deleted"}\n\n')
                break
            data = json.dumps(await detailed_view(request, task), separators=(",", ":"))
            await stream.write(f"event: job\nid: {task.updated_at}\ndata: {data}\n\n".encode())
            if task.terminal:
                break
            if watch.closing.is_set():
                await stream.write(b"event: closing\ndata: {}\n\n")
                break
    except (ConnectionResetError, StoreError) as exc:
        log.info("event_stream_ended", job_id=job_id, reason=str(exc))
    finally:
        await changes.aclose()
    return stream


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/jobs", jobs_index)
    app.router.add_get("/api/v1/jobs/{job_id}/events", job_events)
    app.router.add_get("/api/v1/tasks/{job_id}/events", job_events)
