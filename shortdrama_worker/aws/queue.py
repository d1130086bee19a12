"""SQS: one queue per resource class, each with a DLQ; small messages naming a task."""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from shortdrama_worker.settings import RESOURCES, Resource, Settings

MESSAGE_VERSION = 1
EntryT = TypeVar("EntryT")


class QueueError(Exception):
    """SQS could not be reached or refused the call."""


class MalformedMessage(ValueError):
    """A message body that is not ``{"v":1,"task_id":…,"kind":…}``."""


@dataclass(frozen=True)
class JobMessage:
    """A received message, parsed."""

    resource: Resource
    message_id: str
    receipt_handle: str
    body: str
    sent_at: float | None
    receive_count: int

    def parse(self) -> tuple[str, str]:
        """``(task_id, kind)``; raises ``MalformedMessage`` naming what is wrong."""
        try:
            data = json.loads(self.body)
        except ValueError as exc:
            raise MalformedMessage(f"body is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise MalformedMessage("body is not a JSON object")
        if data.get("v") != MESSAGE_VERSION:
            raise MalformedMessage(f"unsupported message version {data.get('v')!r}")
        task_id, kind = data.get("task_id"), data.get("kind")
        if not isinstance(task_id, str) or not task_id:
            raise MalformedMessage("task_id missing or not a string")
        if not isinstance(kind, str) or not kind:
            raise MalformedMessage("kind missing or not a string")
        return task_id, kind


def encode(task_id: str, kind: str) -> str:
    return json.dumps({"v": MESSAGE_VERSION, "task_id": task_id, "kind": kind})


class _Batcher(Generic[EntryT]):
    """Calls on one queue, coalesced into one batch call while a call is out.

    An entry goes out at once (a plain call when it is alone): no added
    latency when the worker is quiet. Entries asked for while a call is in
    flight wait for it and then go together, up to ten to a call, each caller
    hearing of its own entry. Under load that turns a call per job into about
    one per batch, for the endpoint and for the bill (SQS prices requests).
    """

    _MAX_BATCH = 10  # SQS's limit per batch call
    name = "batch"

    def __init__(self, queue: JobQueue, url: str) -> None:
        self._sqs = queue._sqs
        self._call = queue._call
        self._url = url
        self._waiting: list[tuple[EntryT, asyncio.Future[None]]] = []
        self._sender: asyncio.Task[None] | None = None

    async def put(self, entry: EntryT) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((entry, done))
        if self._sender is None or self._sender.done():
            # Its own task: a caller cancelled mid-wait (a job handed back at
            # shutdown) must not strand the entries queued behind it.
            self._sender = asyncio.create_task(self._send_all(), name=f"sqs-{self.name}-batch")
        await done

    async def _send_all(self) -> None:
        batch: list[tuple[EntryT, asyncio.Future[None]]] = []
        try:
            while self._waiting:
                batch = self._waiting[: self._MAX_BATCH]
                del self._waiting[: self._MAX_BATCH]
                entries = [entry for entry, _ in batch]
                try:
                    alone = len(entries) == 1
                    failures = await (self._one(entries[0]) if alone else self._many(entries))
                except Exception as exc:  # every caller hears of it, whatever it is
                    failures = {str(i): str(exc) for i in range(len(batch))}
                for i, (_, done) in enumerate(batch):
                    error = failures.get(str(i))
                    if done.done():  # its caller is gone
                        continue
                    if error is None:
                        done.set_result(None)
                    else:
                        done.set_exception(QueueError(error))
        finally:
            # Cancelled (the app closing): no caller may wait forever.
            for _, done in batch + self._waiting:
                if not done.done():
                    done.set_exception(
                        QueueError(f"SQS {self.name} abandoned: the queue is closing")
                    )
            self._waiting.clear()

    async def aclose(self) -> None:
        """Let the entries already asked for finish (the client is about to close)."""
        if self._sender is not None:
            await asyncio.gather(self._sender, return_exceptions=True)

    async def _one(self, entry: EntryT) -> dict[str, str]:
        """The single call; ``{}`` (it raises on failure)."""
        raise NotImplementedError

    async def _many(self, entries: list[EntryT]) -> dict[str, str]:
        """The batch call; what went wrong with each failed entry, by index."""
        raise NotImplementedError

    def _failures(self, reply: dict[str, Any]) -> dict[str, str]:
        return {
            str(failed.get("Id")): (
                f"SQS {self.name} failed: {failed.get('Code')}: {failed.get('Message', '')}"
            )
            for failed in reply.get("Failed", [])
        }


class _DeleteBatcher(_Batcher[str]):
    """Deletes by receipt handle."""

    name = "delete"

    async def _one(self, entry: str) -> dict[str, str]:
        sqs, url = self._sqs, self._url
        await self._call("delete", sqs.delete_message, QueueUrl=url, ReceiptHandle=entry)
        return {}

    async def _many(self, entries: list[str]) -> dict[str, str]:
        batch = [{"Id": str(i), "ReceiptHandle": handle} for i, handle in enumerate(entries)]
        reply = await self._call(
            "delete", self._sqs.delete_message_batch, QueueUrl=self._url, Entries=batch
        )
        return self._failures(reply)


class _SendBatcher(_Batcher[tuple[str, int]]):
    """Sends of (body, delay in seconds): submits arriving together share one call."""

    name = "send"

    async def _one(self, entry: tuple[str, int]) -> dict[str, str]:
        body, delay_s = entry
        sqs, url = self._sqs, self._url
        await self._call(
            "send", sqs.send_message, QueueUrl=url, MessageBody=body, DelaySeconds=delay_s
        )
        return {}

    async def _many(self, entries: list[tuple[str, int]]) -> dict[str, str]:
        batch = [
            {"Id": str(i), "MessageBody": body, "DelaySeconds": delay_s}
            for i, (body, delay_s) in enumerate(entries)
        ]
        reply = await self._call(
            "send", self._sqs.send_message_batch, QueueUrl=self._url, Entries=batch
        )
        return self._failures(reply)


class JobQueue:
    """The GPU and CPU queues and their DLQs, by resource class."""

    def __init__(self, client: Any, settings: Settings) -> None:
        self._sqs = client
        self._settings = settings
        self._urls: dict[str, str] = {}
        self._deletes: dict[str, _DeleteBatcher] = {}
        self._sends: dict[str, _SendBatcher] = {}

    async def resolve(self) -> None:
        """Look up the queue URLs once; fails start-up if a queue is missing."""
        for resource in RESOURCES:
            for name in (self._settings.queue_name(resource), self._settings.dlq_name(resource)):
                reply = await self._call("get_url", self._sqs.get_queue_url, QueueName=name)
                self._urls[name] = reply["QueueUrl"]

    def url(self, resource: Resource, *, dlq: bool = False) -> str:
        name = self._settings.dlq_name(resource) if dlq else self._settings.queue_name(resource)
        return self._urls[name]

    async def aclose(self) -> None:
        """Finish the sends and deletes in flight; call before the SQS client closes."""
        batchers: list[_Batcher[Any]] = [*self._sends.values(), *self._deletes.values()]
        for batcher in batchers:
            await batcher.aclose()

    async def send(self, resource: Resource, task_id: str, kind: str, *, delay_s: int = 0) -> None:
        """Queue a job; returns once SQS has it (sends made together share one call)."""
        url = self.url(resource)
        batcher = self._sends.get(url)
        if batcher is None:
            batcher = self._sends[url] = _SendBatcher(self, url)
        await batcher.put((encode(task_id, kind), delay_s))

    async def receive(self, resource: Resource, max_messages: int, wait_s: int) -> list[JobMessage]:
        reply = await self._call(
            "receive",
            self._sqs.receive_message,
            QueueUrl=self.url(resource),
            MaxNumberOfMessages=max(1, min(10, max_messages)),
            WaitTimeSeconds=wait_s,
            MessageSystemAttributeNames=["SentTimestamp", "ApproximateReceiveCount"],
        )
        messages = []
        for raw in reply.get("Messages", []):
            attrs = raw.get("Attributes", {})
            sent = attrs.get("SentTimestamp")
            messages.append(
                JobMessage(
                    resource=resource,
                    message_id=raw["MessageId"],
                    receipt_handle=raw["ReceiptHandle"],
                    body=raw.get("Body", ""),
                    sent_at=int(sent) / 1000 if sent else None,
                    receive_count=int(attrs.get("ApproximateReceiveCount", 1)),
                )
            )
        return messages

    async def delete(self, message: JobMessage) -> None:
        url = self.url(message.resource)
        batcher = self._deletes.get(url)
        if batcher is None:
            batcher = self._deletes[url] = _DeleteBatcher(self, url)
        await batcher.put(message.receipt_handle)

    async def set_visibility(self, message: JobMessage, seconds: float) -> None:
        await self._call(
            "visibility",
            self._sqs.change_message_visibility,
            QueueUrl=self.url(message.resource),
            ReceiptHandle=message.receipt_handle,
            # Rounded up: a 0.8-s backoff must not become no delay at all.
            VisibilityTimeout=max(0, min(43200, math.ceil(seconds))),
        )

    async def dead_letter(self, message: JobMessage, reason: str) -> None:
        """Move a message to its DLQ now, with the reason as an attribute."""
        await self._call(
            "send",
            self._sqs.send_message,
            QueueUrl=self.url(message.resource, dlq=True),
            MessageBody=message.body or "(empty)",
            MessageAttributes={
                "reason": {"DataType": "String", "StringValue": reason[:1000] or "unknown"},
                "source_message_id": {"DataType": "String", "StringValue": message.message_id},
            },
        )
        await self.delete(message)

    async def depth(self, resource: Resource, *, dlq: bool = False) -> tuple[int, int]:
        """(visible, in flight) messages, from the queue's attributes."""
        reply = await self._call(
            "attributes",
            self._sqs.get_queue_attributes,
            QueueUrl=self.url(resource, dlq=dlq),
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )
        attrs = reply.get("Attributes", {})
        return (
            int(attrs.get("ApproximateNumberOfMessages", 0)),
            int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0)),
        )

    async def _call(self, operation: str, method: Any, **kwargs: Any) -> Any:
        try:
            return await method(**kwargs)
        except (ClientError, BotoCoreError, OSError) as exc:
            raise QueueError(f"SQS {operation} failed: {exc}") from exc
