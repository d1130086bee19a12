"""Job webhooks: a signed POST to the job's ``callback_url`` when it ends.

Signed per Standard Webhooks (``webhook-id``, ``webhook-timestamp``,
``webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">``) so a
receiver can use any Standard Webhooks library to verify. Deliveries run in
their own tasks, never on the consumer's path: a slow receiver cannot hold a
queue slot. Each attempt is recorded on the job. Delivery is at-least-once
within a process's life; a process that dies mid-retry loses the remaining
retries (the job's outcome itself is never affected).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import structlog
import yarl

from shortdrama_worker.aws.store import StoreError, Task, TaskStore
from shortdrama_worker.inputs.netguard import (
    AddressPolicy,
    AddressRefused,
    UrlRefused,
    refusal_of,
    web_target,
)
from shortdrama_worker.settings import WebhookSettings

log = structlog.get_logger("shortdrama_worker.jobs.webhooks")


def secret_bytes(secret: str) -> bytes:
    """Standard Webhooks secrets are ``whsec_`` + base64; anything else is used as is."""
    if secret.startswith("whsec_"):
        return base64.b64decode(secret.removeprefix("whsec_"))
    return secret.encode()


def sign(secret: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


class WebhookSender:
    """Delivers job webhooks in background tasks, with bounded retries."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        store: TaskStore,
        settings: WebhookSettings,
        render: Callable[[Task], Awaitable[dict[str, Any]]],
        policy: AddressPolicy,
    ) -> None:
        # ``http`` is the session whose resolver refuses internal addresses.
        self._http = http
        self._policy = policy
        self._store = store
        self.settings = settings
        self._render = render  # Task -> public job dict, the same shape GET returns
        self._tasks: set[asyncio.Task[None]] = set()

    def schedule(self, task: Task) -> None:
        """Send the webhook for a finished job, if it asked for one."""
        if not task.callback_url or not task.terminal or self.settings.secret is None:
            return
        delivery = asyncio.create_task(self._deliver(task), name=f"webhook-{task.task_id}")
        self._tasks.add(delivery)
        delivery.add_done_callback(self._tasks.discard)

    async def close(self, grace_s: float = 5.0) -> None:
        """Give in-flight deliveries a moment, then stop them."""
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def _target(self, url: str) -> yarl.URL:
        """The normalised URL to post to; ``UrlRefused`` if it may never be posted to.

        Judged as aiohttp will connect (yarl, IDNA), the same rules as inputs;
        the session's resolver and request hook judge it again at connect time.
        """
        target = web_target(url, allow_http=True)
        reason = self._policy.url_refusal(target)
        if reason:
            raise UrlRefused(reason, code="address_refused")
        return target

    async def _deliver(self, task: Task) -> None:
        assert task.callback_url is not None and self.settings.secret is not None
        secret = secret_bytes(self.settings.secret.get_secret_value())
        msg_id = f"msg_{task.task_id}_{task.status}"
        body = json.dumps(
            {
                "type": f"job.{task.status}",
                "timestamp": time.time(),
                "data": await self._render(task),
            },
            separators=(",", ":"),
        ).encode()
        deliveries: list[dict[str, Any]] = list(task.webhook_deliveries or [])
        bound = log.bind(job_id=task.task_id, url=task.callback_url)
        for attempt in range(1, self.settings.max_attempts + 1):
            timestamp = int(time.time())
            headers = {
                "Content-Type": "application/json",
                "webhook-id": msg_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": sign(secret, msg_id, timestamp, body),
            }
            record: dict[str, Any] = {"attempt": attempt, "at": timestamp}
            retry = True
            try:
                url = self._target(task.callback_url)
                async with self._http.post(
                    url,
                    data=body,
                    headers=headers,
                    allow_redirects=False,  # a redirect could lead inside the network
                    timeout=aiohttp.ClientTimeout(total=self.settings.timeout_s),
                ) as resp:
                    record["status"] = resp.status
                    retry = not 200 <= resp.status < 300
            except UrlRefused as exc:
                record["error"] = f"refused: {exc.reason}"
                retry = False
            except (aiohttp.ClientError, TimeoutError, AddressRefused) as exc:
                refused = refusal_of(exc)
                record["error"] = f"refused: {refused.reason}" if refused else str(exc) or "timeout"
                retry = refused is None
            deliveries.append(record)
            with contextlib.suppress(StoreError):
                await self._store.record_deliveries(task.task_id, deliveries)
            if not retry:
                # ``record`` carries ``attempt`` already.
                bound.info(
                    "webhook_delivered" if "status" in record else "webhook_refused", **record
                )
                return
            bound.warning("webhook_failed", **record)
            if attempt < self.settings.max_attempts:
                await asyncio.sleep(self.settings.backoff_base_s * 2 ** (attempt - 1))
        bound.error("webhook_gave_up", attempts=self.settings.max_attempts)
