"""An HTTP proxy in front of moto that fails chosen AWS operations on purpose.

Both DynamoDB and SQS (botocore ≥ 1.31) speak the AWS JSON protocol, naming
the operation in ``X-Amz-Target`` (``DynamoDB_20120810.UpdateItem``,
``AmazonSQS.DeleteMessage``); a rule matches on that. A failure answers the
way AWS does: status 400 with ``__type`` for throttling, 500 for an internal
error, with the JSON body botocore parses into a ``ClientError``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

THROTTLED = (
    400,
    {
        "__type": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
        "message": "The level of configured provisioned throughput for the table was exceeded.",
    },
)
INTERNAL = (500, {"__type": "InternalFailure", "message": "We encountered an internal error."})

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


@dataclass
class Rule:
    target: str  # the operation, e.g. "UpdateItem" or "DeleteMessage"
    times: int  # how many matching requests fail before the proxy lets them through
    reply: tuple[int, dict[str, Any]]
    after: bool = False  # forward first, then answer with the failure: a lost answer


class FaultProxy:
    """``async with FaultProxy(upstream) as proxy``; point the daemon at ``proxy.url``."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.rules: list[Rule] = []
        self.failed: Counter[str] = Counter()
        self.seen: Counter[str] = Counter()
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None

    def fail(
        self, target: str, times: int, reply: tuple[int, dict[str, Any]], *, after: bool = False
    ) -> None:
        """Fail ``times`` calls of ``target``; with ``after`` the call lands first."""
        self.rules.append(Rule(target, times, reply, after))

    async def __aenter__(self) -> FaultProxy:
        self._http = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._http is not None:
            await self._http.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        operation = request.headers.get("X-Amz-Target", "").rpartition(".")[2]
        if operation:
            self.seen[operation] += 1
        for rule in self.rules:
            if rule.target == operation and rule.times > 0:
                rule.times -= 1
                self.failed[operation] += 1
                if rule.after:
                    await self._upstream(request)
                status, body = rule.reply
                return web.json_response(
                    body, status=status, content_type="application/x-amz-json-1.0"
                )
        return await self._upstream(request)

    async def _upstream(self, request: web.Request) -> web.Response:
        assert self._http is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        async with self._http.request(
            request.method,
            f"{self.upstream}{request.rel_url}",
            headers=headers,
            data=await request.read(),
            allow_redirects=False,
        ) as upstream:
            body = await upstream.read()
            out_headers = {
                k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP
            }
            return web.Response(status=upstream.status, body=body, headers=out_headers)
