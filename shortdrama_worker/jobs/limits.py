"""Per-key limits kept in the task table, so every instance sees the same counts.

Three small items per key live beside the task records (their ``task_id``
starts with ``#limits/``, which no job id does; they carry no ``status``, so
the status index never lists them, and ``expires_at`` lets TTL remove them):

* ``#limits/<key>/rate/<window>``: submits in one fixed window. One
  conditional ``ADD`` admits or refuses; a window's count starts from zero.
* ``#limits/<key>/live``: a map of the key's unfinished jobs (job id → when
  admitted). A job enters with a conditional write bounded by the map's size
  and leaves when it settles; leaving is idempotent (``REMOVE`` of a key). If a
  job's exit is lost (a crash between its last write and ours), the map is
  repaired when it would refuse: entries whose job is finished or gone are
  dropped after a consistent read of those records. A slot can therefore be
  held too long, never forever.
* ``#limits/<key>/day/<YYYY-MM-DD>`` (UTC): jobs admitted and estimated spend
  that day. Spend is added when a job completes, so jobs already accepted may
  take a day's spend past its quota; new ones are refused from then on.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from shortdrama_worker.aws.clients import error_code
from shortdrama_worker.aws.store import TERMINAL, StoreError
from shortdrama_worker.edge_settings import LimitSettings, LimitsSettings

log = structlog.get_logger("shortdrama_worker.jobs.limits")

ANONYMOUS = "(anonymous)"
PREFIX = "#limits/"
# A job admitted this recently may not have its record yet (its inputs are
# still being staged); the repair leaves such entries alone.
_ADMISSION_GRACE_S = 300.0
_CONCURRENCY_RETRY_S = 5
_COUNTER_TTL_S = 3 * 86400


class LimitExceeded(Exception):
    """A limit refuses the request; ``limit`` names it, ``retry_after_s`` says when to retry."""

    def __init__(self, limit: str, retry_after_s: int, message: str) -> None:
        super().__init__(message)
        self.limit = limit
        self.retry_after_s = max(1, retry_after_s)
        self.message = message


@dataclass(frozen=True)
class Admission:
    """What admitting one job took, so that a submit that fails can give it back."""

    principal: str
    task_id: str
    slot: bool
    day: str | None


def _n(value: float) -> dict[str, str]:
    return {"N": format(Decimal(str(value)), "f")}


class Limits:
    """Checks and counts per-key limits in the task table."""

    def __init__(
        self,
        client: Any,
        table: str,
        settings: LimitsSettings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = client
        self.table = table
        self.settings = settings
        self._clock = clock

    def limits_for(self, key_id: str | None) -> LimitSettings:
        return self.settings.for_principal(key_id)

    @staticmethod
    def principal(key_id: str | None) -> str:
        return key_id if key_id is not None else ANONYMOUS

    # -- rate ------------------------------------------------------------------

    async def check_rate(self, key_id: str | None) -> None:
        """Count one submit in the current window; ``LimitExceeded`` if it is full."""
        limits = self.limits_for(key_id)
        if limits.rate is None:
            return
        now = self._clock()
        width = limits.rate_window_s
        window = int(now // width)
        try:
            await self._update(
                f"{PREFIX}{self.principal(key_id)}/rate/{window}",
                "ADD #n :one SET expires_at = :exp",
                "attribute_not_exists(#n) OR #n < :max",
                {"#n": "submits"},
                {":one": _n(1), ":max": _n(limits.rate), ":exp": _n(int(now) + _COUNTER_TTL_S)},
            )
        except _Refused:
            retry = math.ceil((window + 1) * width - now)
            raise LimitExceeded(
                "rate",
                retry,
                f"rate limit: {limits.rate} submits per {width} s for this key; "
                f"retry in {max(1, retry)} s",
            ) from None

    # -- concurrency and daily quotas ----------------------------------------

    async def admit(self, key_id: str | None, task_id: str) -> Admission | None:
        """Take a concurrency slot and a job from the day's quota for ``task_id``.

        ``LimitExceeded`` if either is spent (nothing is kept then); ``None``
        when the key has neither limit.
        """
        limits = self.limits_for(key_id)
        quota = limits.jobs_per_day is not None or limits.cost_per_day is not None
        if limits.concurrency is None and not quota:
            return None
        principal = self.principal(key_id)
        # Both writes at once: a submit pays one round trip for them, not two.
        taken = await asyncio.gather(
            self._take_slot(principal, task_id, limits.concurrency)
            if limits.concurrency is not None
            else _nothing(False),
            self._count_day(principal, limits) if quota else _nothing(None),
            return_exceptions=True,
        )
        slot, day = taken
        failure = next((t for t in taken if isinstance(t, BaseException)), None)
        if failure is not None:
            # Give back whichever half succeeded, then report the refusal.
            await self.refund(
                Admission(principal, task_id, slot is True, day if isinstance(day, str) else None)
            )
            raise failure
        assert isinstance(slot, bool) and (day is None or isinstance(day, str))
        return Admission(principal, task_id, slot, day)

    async def refund(self, admission: Admission) -> None:
        """Give back what ``admit`` took, for a submit that did not create a job."""
        if admission.slot:
            await self.release_slot(admission.principal, admission.task_id)
        if admission.day is not None:
            try:
                await self._update(
                    f"{PREFIX}{admission.principal}/day/{admission.day}",
                    "ADD #j :minus",
                    None,
                    {"#j": "jobs"},
                    {":minus": _n(-1)},
                )
            except StoreError as exc:
                log.warning("quota_refund_failed", error=str(exc))

    async def release_slot(self, principal: str, task_id: str) -> None:
        """The job left the key's unfinished set; idempotent, never raises."""
        try:
            await self._update(
                f"{PREFIX}{principal}/live",
                "REMOVE #jobs.#id",
                "attribute_exists(#jobs)",
                {"#jobs": "jobs", "#id": task_id},
                {},
            )
        except _Refused:
            pass  # no map: nothing to release
        except StoreError as exc:
            # The repair on the next refusal finds this job finished.
            log.warning("slot_release_failed", job_id=task_id, error=str(exc))

    async def add_spend(self, principal: str, amount: float) -> None:
        """Add a finished job's estimated cost to today's spend of its key."""
        if amount <= 0:
            return
        now = self._clock()
        try:
            await self._update(
                f"{PREFIX}{principal}/day/{_day(now)}",
                "ADD #s :amount SET expires_at = :exp",
                None,
                {"#s": "spent"},
                {":amount": _n(amount), ":exp": _n(int(now) + _COUNTER_TTL_S)},
            )
        except StoreError as exc:
            log.warning("spend_not_recorded", error=str(exc), amount=amount)

    async def _take_slot(self, principal: str, task_id: str, limit: int) -> bool:
        """Enter ``task_id`` in the key's unfinished set; whether it was not there yet."""
        item = f"{PREFIX}{principal}/live"
        for attempt in range(3):
            try:
                reply = await self._update(
                    item,
                    "SET #jobs.#id = :now",
                    # No map yet: the write fails on the path and the map is made.
                    "attribute_not_exists(#jobs) OR attribute_exists(#jobs.#id)"
                    " OR size(#jobs) < :max",
                    {"#jobs": "jobs", "#id": task_id},
                    {":now": _n(round(self._clock(), 3)), ":max": _n(limit)},
                    returns="UPDATED_OLD",
                )
                old = reply.get("Attributes", {}).get("jobs", {}).get("M", {})
                return task_id not in old
            except _MissingMap:
                await self._create_map(item)
            except _Refused:
                if attempt < 2 and await self._repair(item):
                    continue
                break
        raise LimitExceeded(
            "concurrency",
            _CONCURRENCY_RETRY_S,
            f"concurrency limit: {limit} unfinished jobs for this key; "
            "retry when one of them has finished",
        )

    async def _create_map(self, item: str) -> None:
        with contextlib.suppress(_Refused):  # another instance created it first
            await self._call(
                self._db.put_item,
                TableName=self.table,
                Item={"task_id": {"S": item}, "jobs": {"M": {}}},
                ConditionExpression="attribute_not_exists(task_id)",
            )

    async def _repair(self, item: str) -> bool:
        """Drop entries whose job has finished or is gone; whether any was dropped."""
        reply = await self._call(
            self._db.get_item,
            TableName=self.table,
            Key={"task_id": {"S": item}},
            ConsistentRead=True,
        )
        entries = reply.get("Item", {}).get("jobs", {}).get("M", {})
        if not entries:
            return False
        statuses = await self._statuses(list(entries))
        now = self._clock()
        stale = [
            job_id
            for job_id, admitted in entries.items()
            if statuses.get(job_id) in TERMINAL
            or (job_id not in statuses and now - float(admitted["N"]) > _ADMISSION_GRACE_S)
        ]
        if not stale:
            return False
        names = {"#jobs": "jobs", **{f"#j{i}": job_id for i, job_id in enumerate(stale)}}
        await self._update(
            item,
            "REMOVE " + ", ".join(f"#jobs.#j{i}" for i in range(len(stale))),
            None,
            names,
            {},
        )
        log.info("concurrency_slots_repaired", released=len(stale))
        return True

    async def _statuses(self, job_ids: list[str]) -> dict[str, str]:
        """The status of each job that still has a record (consistent reads)."""
        found: dict[str, str] = {}
        for start in range(0, len(job_ids), 100):
            keys = [{"task_id": {"S": j}} for j in job_ids[start : start + 100]]
            request: dict[str, Any] = {
                self.table: {
                    "Keys": keys,
                    "ConsistentRead": True,
                    "ProjectionExpression": "task_id, #s",
                    "ExpressionAttributeNames": {"#s": "status"},
                }
            }
            while request:
                reply = await self._call(self._db.batch_get_item, RequestItems=request)
                for row in reply.get("Responses", {}).get(self.table, []):
                    found[row["task_id"]["S"]] = row.get("status", {}).get("S", "")
                request = reply.get("UnprocessedKeys") or {}
        return found

    async def _count_day(self, principal: str, limits: LimitSettings) -> str:
        now = self._clock()
        day = _day(now)
        conditions = []
        values = {":one": _n(1), ":exp": _n(int(now) + _COUNTER_TTL_S)}
        if limits.jobs_per_day is not None:
            conditions.append("(attribute_not_exists(#j) OR #j < :jobs)")
            values[":jobs"] = _n(limits.jobs_per_day)
        if limits.cost_per_day is not None:
            conditions.append("(attribute_not_exists(#s) OR #s < :cost)")
            values[":cost"] = _n(limits.cost_per_day)
        try:
            await self._update(
                f"{PREFIX}{principal}/day/{day}",
                "ADD #j :one SET expires_at = :exp",
                " AND ".join(conditions),
                {"#j": "jobs", "#s": "spent"}
                if limits.cost_per_day is not None
                else {"#j": "jobs"},
                values,
            )
        except _Refused as refused:
            raise _quota_refusal(limits, refused.old, now) from None
        return day

    async def _update(
        self,
        item: str,
        expression: str,
        condition: str | None,
        names: dict[str, str],
        values: dict[str, Any],
        *,
        returns: str = "NONE",
    ) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "Key": {"task_id": {"S": item}},
            "UpdateExpression": expression,
            "ExpressionAttributeNames": names,
            "ReturnValues": returns,
        }
        if values:
            kwargs["ExpressionAttributeValues"] = values
        if condition:
            kwargs["ConditionExpression"] = condition
            kwargs["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
        return await self._call(self._db.update_item, **kwargs)

    async def _call(self, method: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            reply: dict[str, Any] = await method(**kwargs)
        except ClientError as exc:
            code = error_code(exc)
            if code == "ConditionalCheckFailedException":
                raise _Refused(exc.response.get("Item") or {}) from None
            if code == "ValidationException" and "document path" in str(exc).lower():
                raise _MissingMap from None
            raise StoreError(str(exc)) from exc
        except (BotoCoreError, OSError) as exc:
            raise StoreError(str(exc)) from exc
        return reply


async def _nothing(value: Any) -> Any:
    return value


class _Refused(Exception):
    """A counter's condition refused the write; ``old`` is the item as it was."""

    def __init__(self, old: dict[str, Any]) -> None:
        super().__init__("limit condition failed")
        self.old = old


class _MissingMap(Exception):
    """The key's map of unfinished jobs does not exist yet."""


def _day(now: float) -> str:
    return dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%d")


def _quota_refusal(limits: LimitSettings, old: dict[str, Any], now: float) -> LimitExceeded:
    midnight = (dt.datetime.fromtimestamp(now, dt.UTC) + dt.timedelta(days=1)).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    retry = math.ceil(midnight.timestamp() - now)
    jobs = float(old.get("jobs", {}).get("N", 0))
    if limits.jobs_per_day is not None and jobs >= limits.jobs_per_day:
        return LimitExceeded(
            "jobs_per_day",
            retry,
            f"daily quota: {limits.jobs_per_day} jobs per day for this key are used up",
        )
    spent = float(old.get("spent", {}).get("N", 0))
    return LimitExceeded(
        "cost_per_day",
        retry,
        f"daily quota: this key's estimated spend today ({spent:g}) reached its "
        f"limit of {limits.cost_per_day:g}",
    )
