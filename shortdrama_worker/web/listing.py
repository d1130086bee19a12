"""``GET /api/v1/jobs``: jobs newest first through the status index, with a cursor.

The index is partitioned by status, so each wanted status is queried on its
own (newest first) and the pages are merged. The cursor records, per status,
where its query stands: the index key of the last job handed out (or of the
last one read past a filter), ``"start"``, or nothing once it is used up. It
also carries a digest of the filters, so a cursor cannot be replayed against
another query, and every key in it is checked before it reaches DynamoDB.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from shortdrama_worker.aws.store import STATUSES, Task, TaskStore

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
# Pages read per status and request when a filter hides most of the index.
_MAX_PAGES = 5
_START = "start"


class ListingError(ValueError):
    """A query parameter or the cursor is wrong; the message names it."""


@dataclass(frozen=True)
class JobQuery:
    statuses: tuple[str, ...]
    kind: str | None
    since: float | None
    until: float | None
    submitted_by: str | None  # the caller's own jobs only, unless it may read all
    limit: int

    @property
    def digest(self) -> str:
        blob = json.dumps(
            [self.statuses, self.kind, self.since, self.until, self.submitted_by],
            separators=(",", ":"),
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


_PARAMETERS = frozenset({"status", "kind", "since", "until", "limit", "cursor"})


def parse_query(params: Any, submitted_by: str | None) -> JobQuery:
    """Read ``status``, ``kind``, ``since``, ``until`` and ``limit`` from the query string."""
    unknown = sorted(set(params) - _PARAMETERS)
    if unknown:
        # Strict at the edge, as submit is: a misspelt filter must not list everything.
        raise ListingError(
            f"unknown query parameter {', '.join(repr(u) for u in unknown)}; "
            f"use {', '.join(sorted(_PARAMETERS))}"
        )
    statuses = _statuses(params)
    kind = params.get("kind") or None
    if kind is not None and len(kind) > 100:
        raise ListingError("kind: longer than 100 characters")
    since = _time(params, "since")
    until = _time(params, "until")
    if since is not None and until is not None and since > until:
        raise ListingError("since: later than until")
    return JobQuery(statuses, kind, since, until, submitted_by, _limit(params))


def _statuses(params: Any) -> tuple[str, ...]:
    if not params.get("status"):
        return STATUSES
    wanted = [s.strip() for s in params["status"].split(",") if s.strip()]
    unknown = [s for s in wanted if s not in STATUSES]
    if unknown or not wanted:
        raise ListingError(f"status: unknown {', '.join(unknown)}; use {', '.join(STATUSES)}")
    return tuple(s for s in STATUSES if s in wanted)


def _limit(params: Any) -> int:
    try:
        limit = int(params.get("limit", DEFAULT_LIMIT))
    except ValueError:
        raise ListingError(f"limit: not an integer (1–{MAX_LIMIT})") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise ListingError(f"limit: must be 1–{MAX_LIMIT}")
    return limit


def _time(params: Any, name: str) -> float | None:
    """Epoch seconds or an ISO 8601 timestamp (UTC unless it says otherwise)."""
    raw = params.get(name)
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ListingError(f"{name}: not epoch seconds or an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.now().astimezone().tzinfo).astimezone()
    return moment.timestamp()


def encode_cursor(query: JobQuery, positions: dict[str, Any]) -> str:
    blob = json.dumps({"v": 1, "q": query.digest, "p": positions}, separators=(",", ":"))
    return base64.urlsafe_b64encode(blob.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, query: JobQuery) -> dict[str, Any]:
    """The per-status positions in ``cursor``; ``ListingError`` if it is not one of ours."""
    try:
        blob = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error):
        raise ListingError("cursor: malformed; pass next_cursor as it was returned") from None
    if not isinstance(blob, dict) or blob.get("v") != 1 or not isinstance(blob.get("p"), dict):
        raise ListingError("cursor: malformed; pass next_cursor as it was returned")
    if blob.get("q") != query.digest:
        raise ListingError("cursor: made for other filters; repeat the query it came from")
    positions: dict[str, Any] = blob["p"]
    for status, position in positions.items():
        if status not in query.statuses or not (position == _START or _valid_key(position, status)):
            raise ListingError("cursor: malformed; pass next_cursor as it was returned")
    return positions


def _valid_key(key: Any, status: str) -> bool:
    if not isinstance(key, dict) or set(key) != {"task_id", "status", "created_at"}:
        return False
    task_id, key_status, created = key["task_id"], key["status"], key["created_at"]
    if not (isinstance(task_id, dict) and set(task_id) == {"S"} and isinstance(task_id["S"], str)):
        return False
    if key_status != {"S": status}:
        return False
    if not (isinstance(created, dict) and set(created) == {"N"} and isinstance(created["N"], str)):
        return False
    try:
        Decimal(created["N"])
    except InvalidOperation:
        return False
    return 0 < len(task_id["S"]) <= 128


def _index_key(task: Task) -> dict[str, Any]:
    return {
        "task_id": {"S": task.task_id},
        "status": {"S": task.status},
        "created_at": {"N": format(Decimal(str(task.created_at)), "f")},
    }


async def list_jobs(
    store: TaskStore, query: JobQuery, cursor: str | None
) -> tuple[list[Task], str | None]:
    """One page of jobs, newest first, and the cursor of the next page (or ``None``)."""
    positions: dict[str, Any] = (
        decode_cursor(cursor, query) if cursor else dict.fromkeys(query.statuses, _START)
    )
    found: dict[str, tuple[list[Task], dict[str, Any] | None]] = {}
    for status, position in positions.items():
        start: dict[str, Any] | None = None if position == _START else position
        found[status] = await _read(store, query, status, start)
    merged = sorted(
        ((task, status) for status, (tasks, _) in found.items() for task in tasks),
        key=lambda pair: pair[0].created_at,
        reverse=True,
    )[: query.limit]
    taken = {status: 0 for status in found}
    for _, status in merged:
        taken[status] += 1
    following: dict[str, Any] = {}
    for status, (tasks, last_key) in found.items():
        if taken[status] < len(tasks):
            # Some read jobs were not handed out: resume right after the last one that was.
            count = taken[status]
            following[status] = _index_key(tasks[count - 1]) if count else positions[status]
        elif last_key is not None:
            following[status] = last_key
    next_cursor = encode_cursor(query, following) if following else None
    return [task for task, _ in merged], next_cursor


async def _read(
    store: TaskStore, query: JobQuery, status: str, start: dict[str, Any] | None
) -> tuple[list[Task], dict[str, Any] | None]:
    """Up to ``limit`` matching jobs of one status, and where the reading stopped."""
    tasks: list[Task] = []
    last = start
    for _ in range(_MAX_PAGES):
        page, last = await store.page_by_status(
            status,
            since=query.since,
            until=query.until,
            kind=query.kind,
            submitted_by=query.submitted_by,
            limit=query.limit - len(tasks) if not (query.kind or query.submitted_by) else 100,
            start_key=last,
        )
        tasks += page
        if last is None or len(tasks) >= query.limit:
            break
    if len(tasks) > query.limit:
        # Read past the page with a filter: resume after the last job kept.
        tasks = tasks[: query.limit]
        last = _index_key(tasks[-1])
    return tasks, last
