"""A local server that speaks the ``sagemaker-runtime`` wire protocol.

moto's InvokeEndpoint returns canned bodies, never checks the endpoint or the
6 MB limit, cannot raise ModelError, and its InvokeEndpointAsync ignores the
input location, writes to a random bucket and answers 200. So the data plane
is faked here, and only the runtime client is pointed at it; moto (server
mode) keeps S3 and the control plane.

Followed, where a client can tell (botocore's ``sagemaker-runtime``
service-2.json 2017-05-13; AWS's InvokeEndpoint / InvokeEndpointAsync API
reference and async-inference guide; error texts as users quote them in
aws/amazon-sagemaker-examples#245, #799, #4324 and aws/sagemaker-python-sdk#171):

* ``POST /endpoints/{name}/invocations``: the body is the container's payload,
  ``Content-Type``/``Accept`` pass through; the answer carries the container's
  body and type and ``x-Amzn-Invoked-Production-Variant``. A body over
  6,291,456 bytes is refused with 413 before the model sees it.
* ``POST /endpoints/{name}/async-invocations``: input from
  ``X-Amzn-SageMaker-InputLocation`` (read from S3) or an inline body of at
  most 128,000 bytes; answers **202** with ``{"InferenceId"}`` and the
  ``X-Amzn-SageMaker-OutputLocation`` / ``-FailureLocation`` headers
  (``<S3OutputPath>/<id>.out``, ``<S3FailurePath>/<id>-error.out``); the
  result or the failure is written there later.
* Errors as JSON with ``x-amzn-ErrorType`` (``Code:namespace``, which botocore
  cuts at the colon): ``ValidationError`` 400 (unknown endpoint, wrong
  kind of endpoint, missing input); ``ModelError`` 424 with ``ErrorCode``,
  ``OriginalStatusCode``, ``OriginalMessage``, ``LogStreamArn`` and the
  "Received client/server error (N) from primary with message ..." text; the
  model's 60 s limit as ModelError with status 0 and "Your invocation timed
  out ..."; ``ThrottlingException`` 400 and ``ServiceUnavailable`` 503 on
  demand.
* Requests must be SigV4-signed for the ``sagemaker`` signing name.

Not followed: the wording of the wrong-kind-of-endpoint messages (AWS's exact
text was not found; the error type is what clients act on), SNS
notifications, ``RequestTTLSeconds`` expiry, streaming invocation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiobotocore.session import AioSession
from aiohttp import web

ACCOUNT = "123456789012"
SYNC_LIMIT = 6_291_456
ASYNC_INLINE_LIMIT = 128_000
TIMEOUT_MESSAGE = (
    "Your invocation timed out while waiting for a response from container primary. "
    "Review the latency metrics for each container in Amazon CloudWatch, resolve the "
    "issue, and try again."
)


@dataclass
class Reply:
    """What the model container answers."""

    body: bytes
    content_type: str = "application/json"
    status: int = 200


Model = Callable[[bytes, str, str], Awaitable[Reply]]
"""The container: ``(body, content_type, accept) -> Reply``."""


@dataclass
class Endpoint:
    name: str
    model: Model
    asynchronous: bool = False
    output_path: str = ""
    failure_path: str = ""
    model_time_limit_s: float = 60.0
    """The real service gives the container 60 s; tests shorten it."""


@dataclass
class Recorded:
    operation: str
    endpoint: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeSageMakerRuntime:
    s3_endpoint_url: str
    region: str = "us-east-1"
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    throttle_next: int = 0
    unavailable_next: int = 0
    requests: list[Recorded] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def add(self, endpoint: Endpoint) -> Endpoint:
        self.endpoints[endpoint.name] = endpoint
        return endpoint

    def calls(self, operation: str) -> list[Recorded]:
        return [r for r in self.requests if r.operation == operation]

    async def __aenter__(self) -> FakeSageMakerRuntime:
        # Larger than any limit, so the fake (not aiohttp) decides what is too large.
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/endpoints/{name}/invocations", self._invoke)
        app.router.add_post("/endpoints/{name}/async-invocations", self._invoke_async)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_async_done(self, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- the protocol ---------------------------------------------------------------

    def _gate(self, request: web.Request, operation: str) -> web.Response | Endpoint:
        """Signature, throttling, availability and the endpoint's existence and kind."""
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("AWS4-HMAC-SHA256 ") or "/sagemaker/aws4_request" not in auth:
            return _error(403, "IncompleteSignatureException", "Authorization header is missing")
        if self.throttle_next > 0:
            self.throttle_next -= 1
            return _error(400, "ThrottlingException", "Rate exceeded")
        if self.unavailable_next > 0:
            self.unavailable_next -= 1
            return _error(503, "ServiceUnavailable", "Service is temporarily unavailable")
        name = request.match_info["name"]
        endpoint = self.endpoints.get(name)
        if endpoint is None:
            return _error(
                400, "ValidationError", f"Endpoint {name} of account {ACCOUNT} not found."
            )
        if operation == "InvokeEndpoint" and endpoint.asynchronous:
            return _error(
                400,
                "ValidationError",
                f"Endpoint {name} is an async endpoint; use InvokeEndpointAsync.",
            )
        if operation == "InvokeEndpointAsync" and not endpoint.asynchronous:
            return _error(
                400, "ValidationError", f"Endpoint {name} is not configured for async inference."
            )
        return endpoint

    async def _invoke(self, request: web.Request) -> web.Response:
        gate = self._gate(request, "InvokeEndpoint")
        body = await request.read()
        name = request.match_info["name"]
        self.requests.append(Recorded("InvokeEndpoint", name, dict(request.headers), body))
        if isinstance(gate, web.Response):
            return gate
        if len(body) > SYNC_LIMIT:
            # Refused at the front door, before any model: a bare status, no error type.
            return web.Response(
                status=413, text=f"HTTP content length exceeded {SYNC_LIMIT} bytes."
            )
        content_type = request.headers.get("Content-Type", "application/octet-stream")
        accept = request.headers.get("Accept", "*/*")
        try:
            reply = await asyncio.wait_for(
                gate.model(body, content_type, accept), gate.model_time_limit_s
            )
        except TimeoutError:
            return self._model_error(gate, 0, TIMEOUT_MESSAGE)
        if reply.status >= 400:
            return self._model_error(gate, reply.status, reply.body.decode(errors="replace"))
        return web.Response(
            body=reply.body,
            headers={
                "Content-Type": reply.content_type,
                "x-Amzn-Invoked-Production-Variant": "AllTraffic",
            },
        )

    def _model_error(self, endpoint: Endpoint, status: int, text: str) -> web.Response:
        group = f"/aws/sagemaker/Endpoints/{endpoint.name}"
        kind = "client" if 400 <= status < 500 else "server"
        message = (
            f'Received {kind} error ({status}) from primary with message "{text}". See '
            f"https://{self.region}.console.aws.amazon.com/cloudwatch/home?region={self.region}"
            f"#logEventViewer:group={group} in account {ACCOUNT} for more information."
        )
        body = {
            "ErrorCode": f"{kind.upper()}_ERROR_FROM_MODEL",
            "LogStreamArn": f"arn:aws:logs:{self.region}:{ACCOUNT}:log-group:{group}",
            "Message": message,
            "OriginalMessage": text,
            "OriginalStatusCode": status,
        }
        return _error(424, "ModelError", message, body)

    async def _invoke_async(self, request: web.Request) -> web.Response:
        gate = self._gate(request, "InvokeEndpointAsync")
        body = await request.read()
        name = request.match_info["name"]
        self.requests.append(Recorded("InvokeEndpointAsync", name, dict(request.headers), body))
        if isinstance(gate, web.Response):
            return gate
        location = request.headers.get("X-Amzn-SageMaker-InputLocation")
        if bool(location) == bool(body):
            return _error(400, "ValidationError", "Provide exactly one of InputLocation or Body.")
        if len(body) > ASYNC_INLINE_LIMIT:
            return _error(
                400, "ValidationError", f"Inline body exceeds {ASYNC_INLINE_LIMIT} bytes."
            )
        inference_id = request.headers.get("X-Amzn-SageMaker-Inference-Id") or str(uuid.uuid4())
        output = f"{gate.output_path.rstrip('/')}/{uuid.uuid4()}.out"
        failure = (
            f"{gate.failure_path.rstrip('/')}/{uuid.uuid4()}-error.out" if gate.failure_path else ""
        )
        limit = float(request.headers.get("X-Amzn-SageMaker-InvocationTimeoutSeconds", 900))
        task = asyncio.create_task(
            self._run_async(
                gate,
                location or "",
                body,
                request.headers.get("X-Amzn-SageMaker-Content-Type", "application/octet-stream"),
                request.headers.get("X-Amzn-SageMaker-Accept", "*/*"),
                output,
                failure,
                min(limit, gate.model_time_limit_s),
            )
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        headers = {"X-Amzn-SageMaker-OutputLocation": output}
        if failure:
            headers["X-Amzn-SageMaker-FailureLocation"] = failure
        return web.json_response({"InferenceId": inference_id}, status=202, headers=headers)

    async def _run_async(
        self,
        endpoint: Endpoint,
        location: str,
        inline: bytes,
        content_type: str,
        accept: str,
        output: str,
        failure: str,
        limit_s: float,
    ) -> None:
        session = AioSession()
        async with session.create_client(
            "s3",
            region_name=self.region,
            endpoint_url=self.s3_endpoint_url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        ) as s3:
            try:
                body = inline or await _read(s3, location)
                reply = await asyncio.wait_for(endpoint.model(body, content_type, accept), limit_s)
            except TimeoutError:
                reply = Reply(TIMEOUT_MESSAGE.encode(), "text/plain", status=0)
            except Exception as exc:  # the input could not be read: a failure, as in AWS
                reply = Reply(f"Failed to read input: {exc}".encode(), "text/plain", status=400)
            if 200 <= reply.status < 300:
                await _write(s3, output, reply.body, reply.content_type)
            elif failure:
                text = (
                    f"Received {'client' if 400 <= reply.status < 500 else 'server'} error "
                    f"({reply.status}) from model with message "
                    f'"{reply.body.decode(errors="replace")}".'
                )
                await _write(s3, failure, text.encode(), "text/plain")


async def _read(s3: Any, uri: str) -> bytes:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    response = await s3.get_object(Bucket=bucket, Key=key)
    async with response["Body"] as stream:
        data: bytes = await stream.read()
    return data


async def _write(s3: Any, uri: str, data: bytes, content_type: str) -> None:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    await s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)


def _error(
    status: int, code: str, message: str, body: dict[str, Any] | None = None
) -> web.Response:
    payload = body if body is not None else {"message": message}
    return web.Response(
        status=status,
        text=json.dumps(payload),
        headers={
            "Content-Type": "application/json",
            "x-amzn-ErrorType": f"{code}:http://internal.amazon.com/coral/com.amazon.sagemaker/",
            "x-amzn-RequestId": str(uuid.uuid4()),
        },
    )
