"""The task record in DynamoDB (``task_store``) and every status change on it.

Each transition is one conditional ``UpdateItem``: whoever loses a race gets
``StaleTransition`` instead of overwriting the winner. That is what keeps a
redelivered message from running a finished job again and two instances from
both completing one job.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, get_args

from botocore.exceptions import BotoCoreError, ClientError

from shortdrama_worker.aws.clients import error_code

Status = Literal["pending", "processing", "completed", "failed", "cancelled"]
STATUSES: tuple[Status, ...] = get_args(Status)
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled"})


class StoreError(Exception):
    """The store could not be reached or refused the call."""


class StaleTransition(Exception):
    """A conditional write lost: the record is no longer in the expected state."""

    def __init__(self, task: Task | None) -> None:
        super().__init__("task changed under us")
        self.task = task


@dataclass
class Task:
    """One job as stored. Field names follow the older system's record."""

    task_id: str
    job_type: str
    status: str
    created_at: float
    updated_at: float
    resource: str = "cpu"
    input: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    result_url: str | None = None
    result_key: str | None = None
    error_message: str | None = None
    error_code: str | None = None
    api_job_id: str | None = None
    attempts: int = 0
    progress: float = 0.0
    stage: str | None = None
    owner: str | None = None
    lease_until: float | None = None
    cancel_requested: bool = False
    idempotency_key: str | None = None
    request_hash: str | None = None
    submitted_by: str | None = None
    callback_url: str | None = None
    webhook_deliveries: list[dict[str, Any]] | None = None
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: int | None = None
    cost: dict[str, Any] | None = None
    """The estimated cost of the completed job (``costs.estimate``)."""
    reuse: bool | None = None
    """The client's ``"reuse"`` choice; ``None``: the kind's default."""
    reuse_key: str | None = None
    reused_from: str | None = None
    """The job whose result answered this one, when it was reused."""

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def lease_live(self, now: float) -> bool:
        return self.status == "processing" and (self.lease_until or 0) > now


_JSON_FIELDS = {"input", "result", "webhook_deliveries", "cost"}
_INT_FIELDS = {"attempts", "expires_at"}


def _to_attr(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, int | float | Decimal):
        return {"N": format(Decimal(str(value)), "f")}
    if isinstance(value, str):
        return {"S": value}
    raise TypeError(f"cannot store {type(value).__name__}")


def _marshal(task: Task) -> dict[str, dict[str, Any]]:
    item: dict[str, dict[str, Any]] = {}
    for name, value in task.__dict__.items():
        if value is None:
            continue  # absent attributes keep the GSI and conditions simple
        if name in _JSON_FIELDS:
            item[name] = {"S": json.dumps(value, separators=(",", ":"))}
        else:
            item[name] = _to_attr(value)
    return item


def _unmarshal(item: dict[str, dict[str, Any]]) -> Task:
    values: dict[str, Any] = {}
    known = Task.__dataclass_fields__
    for name, attr in item.items():
        if name not in known:
            continue  # attributes written by newer versions or other tools
        if "S" in attr:
            values[name] = json.loads(attr["S"]) if name in _JSON_FIELDS else attr["S"]
        elif "N" in attr:
            number = Decimal(attr["N"])
            values[name] = int(number) if name in _INT_FIELDS else float(number)
        elif "BOOL" in attr:
            values[name] = attr["BOOL"]
    return Task(**values)


class TaskStore:
    """Conditional reads and writes of task records."""

    def __init__(self, client: Any, table: str, *, ttl_days: int, status_index: str) -> None:
        self._db = client
        self.table = table
        self.status_index = status_index
        self.ttl_s = ttl_days * 86400
        # Told of every record this process writes (progress, status changes),
        # so waiting clients on this instance learn of them without polling.
        self.listeners: list[Callable[[Task], None]] = []

    def _written(self, task: Task) -> None:
        for listener in self.listeners:
            listener(task)

    async def create(self, task: Task) -> None:
        """Insert a new record; ``StaleTransition(existing)`` if the id is taken."""
        task.expires_at = int(task.created_at + self.ttl_s)
        await self._call(
            self._db.put_item,
            TableName=self.table,
            Item=_marshal(task),
            ConditionExpression="attribute_not_exists(task_id)",
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )
        self._written(task)

    async def get(self, task_id: str) -> Task | None:
        reply = await self._call(
            self._db.get_item,
            TableName=self.table,
            Key={"task_id": {"S": task_id}},
            ConsistentRead=True,
        )
        item = reply.get("Item")
        # Only task records: the table also keeps the service's own secrets, and
        # counter and pointer items (``limits``, ``reuse``), which are no jobs.
        return _unmarshal(item) if item and "job_type" in item else None

    async def shared_secret(self, name: str) -> bytes:
        """A random 256-bit secret kept in the table, the same for every instance.

        Made on first use with a conditional put, so concurrent first starts
        agree on one value. The record is not a task: ``get`` never returns it.
        """
        item_id = f"__secret__{name}"
        for _ in range(2):
            reply = await self._call(
                self._db.get_item,
                TableName=self.table,
                Key={"task_id": {"S": item_id}},
                ConsistentRead=True,
            )
            stored = reply.get("Item", {}).get("secret", {}).get("S")
            if stored:
                return bytes.fromhex(stored)
            with contextlib.suppress(StaleTransition):  # another instance made it first
                await self._call(
                    self._db.put_item,
                    TableName=self.table,
                    Item={"task_id": {"S": item_id}, "secret": {"S": secrets.token_hex(32)}},
                    ConditionExpression="attribute_not_exists(task_id)",
                )
        raise StoreError(f"shared secret {name!r} could not be read back")

    async def delete_pending(self, task_id: str) -> None:
        """Undo a ``create`` whose message could not be queued."""
        with contextlib.suppress(StaleTransition):  # no longer pending: leave it be
            await self._call(
                self._db.delete_item,
                TableName=self.table,
                Key={"task_id": {"S": task_id}},
                ConditionExpression="#s = :pending",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={":pending": {"S": "pending"}},
            )

    # -- transitions -------------------------------------------------------------

    async def claim(
        self, task_id: str, kind: str, owner: str, lease_s: float, max_attempts: int
    ) -> Task:
        """pending (or processing with an expired lease) → processing, owned by us.

        Refused (``StaleTransition`` with the record) for another kind, a
        finished job, a live lease, or a job out of attempts.
        """
        now = time.time()
        return await self._update(
            task_id,
            set_={
                "status": "processing",
                "owner": owner,
                "lease_until": now + lease_s,
                "started_at": now,
                "updated_at": now,
            },
            add={"attempts": 1},
            remove=("error_code",),
            condition=(
                "#kind = :kind AND (attribute_not_exists(#attempts) OR #attempts < :max)"
                " AND (attribute_not_exists(#cancel) OR #cancel = :false)"
                " AND (#status = :pending OR (#status = :processing AND #lease < :now))"
            ),
            values={
                ":kind": kind,
                ":max": max_attempts,
                ":pending": "pending",
                ":processing": "processing",
                ":false": False,
                ":now": now,
            },
        )

    async def renew(self, task_id: str, owner: str, lease_s: float) -> Task:
        """Extend our lease; the returned record carries the cancel flag."""
        now = time.time()
        return await self._owned(task_id, owner, {"lease_until": now + lease_s})

    async def set_progress(
        self, task_id: str, owner: str, percent: float, stage: str | None
    ) -> Task:
        values: dict[str, Any] = {"progress": round(percent, 1), "updated_at": time.time()}
        if stage is not None:
            values["stage"] = stage
        return await self._owned(task_id, owner, values)

    async def set_api_job_id(self, task_id: str, owner: str, api_job_id: str) -> Task:
        return await self._owned(task_id, owner, {"api_job_id": api_job_id})

    async def complete(
        self,
        task_id: str,
        owner: str,
        *,
        result: dict[str, Any],
        result_url: str | None,
        result_key: str | None,
        cost: dict[str, Any] | None = None,
        reuse_key: str | None = None,
        reused_from: str | None = None,
    ) -> Task:
        now = time.time()
        values: dict[str, Any] = {
            "status": "completed",
            "result": json.dumps(result, separators=(",", ":")),
            "progress": 100,
            "updated_at": now,
            "finished_at": now,
        }
        if cost is not None:
            values["cost"] = json.dumps(cost, separators=(",", ":"))
        if reuse_key is not None:
            values["reuse_key"] = reuse_key
        if reused_from is not None:
            values["reused_from"] = reused_from
        if result_url is not None:
            values["result_url"] = result_url
        if result_key is not None:
            values["result_key"] = result_key
        return await self._owned(
            task_id,
            owner,
            values,
            remove=("owner", "lease_until", "error_message", "error_code", "stage"),
        )

    async def fail(self, task_id: str, owner: str, *, code: str, message: str) -> Task:
        now = time.time()
        values = {
            "status": "failed",
            "error_code": code,
            "error_message": message,
            "updated_at": now,
            "finished_at": now,
        }
        return await self._owned(task_id, owner, values, remove=("owner", "lease_until"))

    async def cancelled(self, task_id: str, owner: str) -> Task:
        now = time.time()
        values = {"status": "cancelled", "updated_at": now, "finished_at": now}
        return await self._owned(task_id, owner, values, remove=("owner", "lease_until"))

    async def retry_later(self, task_id: str, owner: str, *, code: str, message: str) -> Task:
        """processing → pending after a transient error; the attempt stays counted."""
        values = {
            "status": "pending",
            "error_code": code,
            "error_message": message,
            "updated_at": time.time(),
        }
        return await self._owned(task_id, owner, values, remove=("owner", "lease_until"))

    async def release(self, task_id: str, owner: str) -> Task:
        """processing → pending at shutdown; the interrupted attempt is not counted."""
        return await self._update(
            task_id,
            set_={"status": "pending", "updated_at": time.time()},
            add={"attempts": -1},
            remove=("owner", "lease_until"),
            condition="#owner = :owner AND #status = :processing",
            values={":owner": owner, ":processing": "processing"},
        )

    async def fail_abandoned(self, task_id: str, *, code: str, message: str) -> Task:
        """A job out of attempts that nobody runs (pending, or its owner died) → failed."""
        now = time.time()
        return await self._update(
            task_id,
            set_={
                "status": "failed",
                "error_code": code,
                "error_message": message,
                "updated_at": now,
                "finished_at": now,
            },
            condition="#status = :pending OR (#status = :processing AND #lease < :now)",
            values={":pending": "pending", ":processing": "processing", ":now": now},
            remove=("owner", "lease_until"),
        )

    async def record_deliveries(self, task_id: str, deliveries: list[dict[str, Any]]) -> Task:
        """Keep the webhook delivery log on a finished job."""
        return await self._update(
            task_id,
            set_={"webhook_deliveries": json.dumps(deliveries, separators=(",", ":"))},
            condition="#status IN (:completed, :failed, :cancelled)",
            values={":completed": "completed", ":failed": "failed", ":cancelled": "cancelled"},
        )

    async def orphans(
        self, status: str, before: float, kinds: list[str], *, max_pages: int = 20
    ) -> list[Task]:
        """Oldest jobs of ``kinds`` in ``status`` created before ``before``.

        Read from the status index (eventually consistent), page by page, so
        a backlog of other kinds cannot hide ours.
        """
        if not kinds:
            return []
        placeholders = {f":k{i}": {"S": kind} for i, kind in enumerate(kinds[:100])}
        query: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": self.status_index,
            "KeyConditionExpression": "#s = :s AND created_at < :before",
            "FilterExpression": f"#k IN ({', '.join(placeholders)})",
            "ExpressionAttributeNames": {"#s": "status", "#k": "job_type"},
            "ExpressionAttributeValues": {
                ":s": {"S": status},
                ":before": _to_attr(before),
                **placeholders,
            },
            "Limit": 100,
        }
        found: list[Task] = []
        for _ in range(max_pages):
            reply = await self._call(self._db.query, **query)
            found += [_unmarshal(item) for item in reply.get("Items", [])]
            if "LastEvaluatedKey" not in reply:
                break
            query["ExclusiveStartKey"] = reply["LastEvaluatedKey"]
        return found

    async def claim_orphan(self, task_id: str, before: float) -> Task:
        """Mark a job as re-queued, if it is still an orphan; only one instance wins."""
        return await self._update(
            task_id,
            set_={"updated_at": time.time()},
            condition=(
                "(#status = :pending AND updated_at < :before)"
                " OR (#status = :processing AND #lease < :before)"
            ),
            values={":pending": "pending", ":processing": "processing", ":before": before},
        )

    async def request_cancel(self, task_id: str) -> Task:
        """API cancel: a pending job is cancelled now, a running one is flagged.

        Raises ``StaleTransition`` carrying the record if it is already finished.
        """
        # The job may move between pending and processing while we ask (a
        # claim, a retry, a hand-back); each try settles on what it finds.
        for _ in range(5):
            now = time.time()
            try:
                return await self._update(
                    task_id,
                    set_={
                        "status": "cancelled",
                        "cancel_requested": True,
                        "updated_at": now,
                        "finished_at": now,
                    },
                    condition="#status = :pending",
                    values={":pending": "pending"},
                    remove=("owner", "lease_until"),
                )
            except StaleTransition as stale:
                if stale.task is None or stale.task.status != "processing":
                    raise
            try:
                return await self._update(
                    task_id,
                    set_={"cancel_requested": True, "updated_at": now},
                    condition="#status = :processing",
                    values={":processing": "processing"},
                )
            except StaleTransition as stale:
                if stale.task is None or stale.task.status != "pending":
                    raise
        raise StoreError(f"job {task_id} kept changing state; cancel again")

    async def settle_cancel(self, task_id: str) -> Task:
        """A job flagged for cancel that nobody runs (pending, or its lease ran out) → cancelled.

        A run that ends in a retry or a hand-back between the cancel request
        and the heartbeat that would have seen it leaves such a record.
        """
        now = time.time()
        return await self._update(
            task_id,
            set_={"status": "cancelled", "updated_at": now, "finished_at": now},
            condition=(
                "#cancel = :true AND (#status = :pending"
                " OR (#status = :processing AND #lease < :now))"
            ),
            values={":true": True, ":pending": "pending", ":processing": "processing", ":now": now},
            remove=("owner", "lease_until"),
        )

    async def _owned(
        self,
        task_id: str,
        owner: str,
        set_: dict[str, Any],
        remove: tuple[str, ...] = (),
    ) -> Task:
        return await self._update(
            task_id,
            set_=set_,
            remove=remove,
            condition="#owner = :owner AND #status = :processing",
            values={":owner": owner, ":processing": "processing"},
        )

    async def _update(
        self,
        task_id: str,
        *,
        set_: dict[str, Any],
        condition: str,
        values: dict[str, Any],
        add: dict[str, int] | None = None,
        remove: tuple[str, ...] = (),
    ) -> Task:
        names = {
            "#status": "status",
            "#owner": "owner",
            "#lease": "lease_until",
            "#cancel": "cancel_requested",
            "#kind": "job_type",
            "#attempts": "attempts",
        }
        attr_values = {k: _to_attr(v) for k, v in values.items()}
        parts = []
        assignments = []
        for i, (name, value) in enumerate(set_.items()):
            names[f"#f{i}"] = name
            attr_values[f":v{i}"] = _to_attr(value)
            assignments.append(f"#f{i} = :v{i}")
        for j, (name, delta) in enumerate((add or {}).items()):
            names[f"#a{j}"] = name
            attr_values[f":a{j}"] = _to_attr(delta)
            attr_values[":zero"] = _to_attr(0)
            assignments.append(f"#a{j} = if_not_exists(#a{j}, :zero) + :a{j}")
        parts.append("SET " + ", ".join(assignments))
        if remove:
            for k, name in enumerate(remove):
                names[f"#r{k}"] = name
            parts.append("REMOVE " + ", ".join(f"#r{k}" for k in range(len(remove))))
        used = {n for n in names if n in condition or n in " ".join(parts)}
        reply = await self._call(
            self._db.update_item,
            TableName=self.table,
            Key={"task_id": {"S": task_id}},
            UpdateExpression=" ".join(parts),
            ConditionExpression=f"attribute_exists(task_id) AND ({condition})",
            ExpressionAttributeNames={n: names[n] for n in used},
            ExpressionAttributeValues=attr_values,
            ReturnValues="ALL_NEW",
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )
        task = _unmarshal(reply["Attributes"])
        self._written(task)
        return task

    async def page_by_status(
        self,
        status: str,
        *,
        since: float | None,
        until: float | None,
        kind: str | None,
        submitted_by: str | None,
        limit: int,
        start_key: dict[str, Any] | None,
    ) -> tuple[list[Task], dict[str, Any] | None]:
        """One page of the status index, newest first, filtered by kind and submitter.

        The filter applies after ``limit`` items are read, so a page may hold
        fewer than ``limit`` tasks while the returned key says there are more.
        """
        condition = "#s = :s"
        values: dict[str, Any] = {":s": {"S": status}}
        if since is not None and until is not None:
            condition += " AND created_at BETWEEN :since AND :until"
            values |= {":since": _to_attr(since), ":until": _to_attr(until)}
        elif since is not None:
            condition += " AND created_at >= :since"
            values[":since"] = _to_attr(since)
        elif until is not None:
            condition += " AND created_at <= :until"
            values[":until"] = _to_attr(until)
        names = {"#s": "status"}
        filters = []
        if kind is not None:
            names["#k"] = "job_type"
            values[":k"] = {"S": kind}
            filters.append("#k = :k")
        if submitted_by is not None:
            names["#by"] = "submitted_by"
            values[":by"] = {"S": submitted_by}
            filters.append("#by = :by")
        query: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": self.status_index,
            "KeyConditionExpression": condition,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
            "ScanIndexForward": False,
            "Limit": limit,
        }
        if filters:
            query["FilterExpression"] = " AND ".join(filters)
        if start_key is not None:
            query["ExclusiveStartKey"] = start_key
        reply = await self._call(self._db.query, **query)
        tasks = [_unmarshal(item) for item in reply.get("Items", [])]
        return tasks, reply.get("LastEvaluatedKey")

    async def _call(self, method: Any, **kwargs: Any) -> dict[str, Any]:
        """One DynamoDB call, its failures translated: a lost condition or an outage."""
        try:
            reply: dict[str, Any] = await method(**kwargs)
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                raise StaleTransition(self._old(exc)) from None
            raise StoreError(str(exc)) from exc
        except (BotoCoreError, OSError) as exc:
            raise StoreError(str(exc)) from exc
        return reply

    @staticmethod
    def _old(exc: ClientError) -> Task | None:
        item = exc.response.get("Item")
        return _unmarshal(item) if item else None
