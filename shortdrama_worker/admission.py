"""Taking a key's concurrency slot and daily quota for one job at submit.

Called by ``api.submit`` once the job id is known and before any input is
staged; ``web.limiting`` gives back what was taken when the submit did not
create a job.
"""

from __future__ import annotations

import structlog
from aiohttp import web

from shortdrama_worker import keys
from shortdrama_worker.auth import REQUEST_KEY
from shortdrama_worker.limits import Admission, LimitExceeded
from shortdrama_worker.responses import error_response
from shortdrama_worker.store import StoreError

log = structlog.get_logger("shortdrama_worker.admission")

ADMISSION = web.RequestKey("admission", Admission)


def too_many(request: web.Request, refusal: LimitExceeded) -> web.Response:
    """The ``429`` answer; counted by limit, never by key."""
    request.app[keys.METRICS].submits_refused.labels(refusal.limit).inc()
    log.info("submit_refused", limit=refusal.limit, retry_after_s=refusal.retry_after_s)
    response = error_response(
        429,
        "limit_exceeded",
        refusal.message,
        limit=refusal.limit,
        retry_after_s=refusal.retry_after_s,
    )
    response.headers["Retry-After"] = str(refusal.retry_after_s)
    return response


def key_id(request: web.Request) -> str | None:
    key = request.get(REQUEST_KEY)
    return key.id if key is not None else None


async def admit(request: web.Request, task_id: str, *, replayable: bool) -> web.Response | None:
    """Take the key's concurrency slot and daily quota for ``task_id``; a ``429`` if spent.

    ``replayable``: the request carries an ``Idempotency-Key``. Its job may
    already exist; a retry of an accepted job is answered, not refused.
    """
    limits = request.app[keys.LIMITS]
    try:
        admission = await limits.admit(key_id(request), task_id)
    except LimitExceeded as refusal:
        if replayable and await _exists(request, task_id):
            return None
        return too_many(request, refusal)
    except StoreError as exc:
        return error_response(503, "store_unavailable", f"task store unreachable: {exc}")
    if admission is not None:
        request[ADMISSION] = admission
    return None


async def _exists(request: web.Request, task_id: str) -> bool:
    try:
        return await request.app[keys.STORE].get(task_id) is not None
    except StoreError:
        return False
