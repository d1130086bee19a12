"""Per-key limits at the submit route: ``429`` with ``Retry-After`` naming the limit.

The rate is counted by a middleware before the body is read, so a client
over its rate costs one counter write and nothing else. Concurrency and the
daily quotas are taken inside submit once the job id is known and before any
input is staged (``admit``); the middleware gives them back when that submit
did not create a job (an error, or the replay of an earlier one), so only
accepted jobs count. A job once accepted is never dropped by a limit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from shortdrama_worker import api, keys
from shortdrama_worker.admission import ADMISSION, key_id, too_many
from shortdrama_worker.limits import LimitExceeded
from shortdrama_worker.responses import error_response
from shortdrama_worker.store import StoreError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def limit_submits(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Around submit: count the rate first, give back an admission that made no job."""
    if request.match_info.handler is not api.submit:
        return await handler(request)
    limits = request.app[keys.LIMITS]
    try:
        await limits.check_rate(key_id(request))
    except LimitExceeded as refusal:
        return too_many(request, refusal)
    except StoreError as exc:
        return error_response(503, "store_unavailable", f"task store unreachable: {exc}")
    fresh = False
    try:
        response = await handler(request)
        fresh = response.status == 202 and "Idempotent-Replayed" not in response.headers
        return response
    finally:
        admission = request.get(ADMISSION)
        if admission is not None and not fresh:
            await limits.refund(admission)
