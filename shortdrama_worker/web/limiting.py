"""Per-key request rate at the submit route: ``429`` with ``Retry-After`` naming the limit.

The rate is counted by a middleware before the body is read, so a client over
its rate costs one counter write and nothing else. Concurrency and the daily
quotas are taken by the submission service once the job id is known and
before any input is staged, and given back when that submit did not create a
job (an error, or the replay of an earlier one), so only accepted jobs count.
A job once accepted is never dropped by a limit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from shortdrama_worker import keys
from shortdrama_worker.aws.store import StoreError
from shortdrama_worker.jobs.limits import LimitExceeded
from shortdrama_worker.jobs.submission import too_many
from shortdrama_worker.web import api
from shortdrama_worker.web.auth import REQUEST_KEY
from shortdrama_worker.web.responses import error_response

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def limit_submits(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Around submit: count the key's request rate first."""
    if request.match_info.handler is not api.submit:
        return await handler(request)
    key = request.get(REQUEST_KEY)
    try:
        await request.app[keys.LIMITS].check_rate(key.id if key is not None else None)
    except LimitExceeded as refusal:
        return api.submit_error(too_many(refusal, request.app[keys.METRICS]))
    except StoreError as exc:
        return error_response(503, "store_unavailable", f"task store unreachable: {exc}")
    return await handler(request)
