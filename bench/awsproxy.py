"""A counting, latency-adding HTTP proxy in front of the AWS endpoint, in its own process.

``celery_compare`` puts it between both systems and moto so that it can count
every AWS request each job costs (by service and action, for the list-price
line), and so that a second condition can add a fixed delay to every request,
as a same-region AWS call has (moto on loopback answers in ~3 ms; DynamoDB and
SQS take ~5–20 ms). The delay is slept, not spun: it costs no CPU, so the
endpoint's CPU stays what it is and only the latency changes.

``GET /__counts`` answers the counts so far as JSON; ``DELETE /__counts``
resets them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import socket
from collections import Counter
from collections.abc import Iterator
from typing import Any

_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


def action_of(method: str, path: str, query: str, headers: Any, body: bytes) -> str:
    """``service:Action`` of one AWS request (DynamoDB, SQS JSON or query protocol, S3)."""
    target = headers.get("X-Amz-Target", "")
    if target:
        service = "dynamodb" if target.startswith("DynamoDB") else "sqs"
        return f"{service}:{target.rsplit('.', 1)[-1]}"
    auth = headers.get("Authorization", "")
    if "/sqs/" in auth:
        for part in (query + "&" + body[:200].decode("latin-1")).split("&"):
            if part.startswith("Action="):
                return f"sqs:{part[7:]}"
        return "sqs:?"
    return f"s3:{method}"


MESSAGES = "~messages"
"""Not a request: the SQS messages sent (a ``SendMessageBatch`` counts its entries)."""


def messages_in(action: str, body: bytes) -> int:
    """How many messages a request sends: 1 for SendMessage, the entries of a batch."""
    if action == "sqs:SendMessage":
        return 1
    if action != "sqs:SendMessageBatch":
        return 0
    with contextlib.suppress(ValueError):
        return len(json.loads(body).get("Entries", []))  # the JSON protocol
    return body.count(b".Id=")  # the query protocol: SendMessageBatchRequestEntry.N.Id


def _serve(upstream: str, delay_s: float, port_out: Any) -> None:
    import aiohttp
    from aiohttp import web

    counts: Counter[str] = Counter()

    async def forward(request: web.Request) -> web.StreamResponse:
        if request.path == "/__counts":
            if request.method == "DELETE":
                counts.clear()
            return web.json_response(dict(counts))
        body = await request.read()
        action = action_of(request.method, request.path, request.query_string,
                           request.headers, body)  # fmt: skip
        counts[action] += 1
        counts[MESSAGES] += messages_in(action, body)
        if delay_s:
            await asyncio.sleep(delay_s)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        session: aiohttp.ClientSession = request.app["session"]
        async with session.request(
            request.method,
            upstream + request.path_qs,
            data=body,
            headers=headers,
            allow_redirects=False,
        ) as resp:
            payload = await resp.read()
            out = {k: v for k, v in resp.headers.items() if k.lower() not in _HOP}
            return web.Response(status=resp.status, body=payload, headers=out)

    async def main() -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", forward)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(
            connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",)
        ) as session:
            app["session"] = session
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            site = web.TCPSite(runner, "127.0.0.1", port)
            await site.start()
            port_out.send(port)
            await asyncio.Event().wait()

    asyncio.run(main())


@contextlib.contextmanager
def aws_proxy(upstream: str, delay_s: float = 0.0) -> Iterator[str]:
    """Start the proxy in a child process; yield its URL."""
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    proc = context.Process(target=_serve, args=(upstream, delay_s, theirs), daemon=True)
    proc.start()
    try:
        port = ours.recv()
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.join()


def counts(proxy: str, *, reset: bool = False) -> dict[str, int]:
    """The proxy's counts by ``service:Action``, and ``MESSAGES`` (and reset them, if asked)."""
    import urllib.request

    request = urllib.request.Request(f"{proxy}/__counts", method="DELETE" if reset else "GET")
    with urllib.request.urlopen(request, timeout=10) as resp:
        answer: dict[str, int] = json.loads(resp.read())
    return answer


# List prices, us-east-1, on demand (the AWS pricing pages, November 2024 onward):
# DynamoDB $0.625 per million write request units and $0.125 per million read
# request units (a strongly consistent read of ≤4 KB is 1 RRU; a write of ≤1 KB
# is 1 WRU; our records and Celery's results are under 1 KB); SQS standard
# $0.40 per million requests (each ≤64 KiB). Free tiers are left out.
PRICE_PER_MILLION = {"dynamodb:write": 0.625, "dynamodb:read": 0.125, "sqs": 0.40}
_DYNAMO_READS = {"GetItem", "Query", "Scan", "BatchGetItem", "DescribeTable"}


def price_per_million_jobs(per_job: dict[str, float]) -> float:
    """Dollars per million jobs for ``per_job`` requests by ``service:Action``."""
    dollars = 0.0
    for key, n in per_job.items():
        service, action = key.split(":", 1)
        if service == "dynamodb":
            kind = "dynamodb:read" if action in _DYNAMO_READS else "dynamodb:write"
            dollars += n * PRICE_PER_MILLION[kind]
        elif service == "sqs":
            dollars += n * PRICE_PER_MILLION["sqs"]
    return dollars
