"""The SageMaker back end: an existing endpoint, real-time or asynchronous.

A request goes to the real-time endpoint (``InvokeEndpoint``) when its body
fits SageMaker's synchronous limit (6 MB); images travel as presigned URLs
or ``s3://`` URIs of copies staged in the plugin's bucket, so the body stays
a few hundred bytes however large the photos are. A body over the limit
(``image_encoding = "base64"`` with large photos), a model that overruns the
60 s real-time limit, or a configuration with only an asynchronous endpoint
goes through ``InvokeEndpointAsync``: the body is written to S3, SageMaker
answers 202 with the output and failure locations, and the plugin watches
both until one appears.

Nothing here holds the worker's GPU slot: the GPU is SageMaker's. How many
invocations run at once is bounded by ``max_concurrent_invocations``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from shortdrama_worker.contract import (
    IMAGE_TYPES,
    JobContext,
    PermanentJobError,
    PluginMetrics,
    TransientJobError,
    sniff_content_type,
)

from shortdrama_compose.aws import Clients, split_s3_uri
from shortdrama_compose.model import SYNC_PAYLOAD_LIMIT, SageMakerSettings
from shortdrama_compose.sm_errors import (
    ModelTimeoutError,
    async_failure,
    error_code,
    map_client_error,
    retryable,
)

PROVIDER = "sagemaker"
_NETWORK_ERRORS = (EndpointConnectionError, ConnectTimeoutError, ConnectionClosedError)


class Invoker:
    """Calls the configured endpoints and turns their answer into image bytes."""

    def __init__(
        self,
        settings: SageMakerSettings,
        clients: Clients,
        http: aiohttp.ClientSession,
        metrics: PluginMetrics,
    ) -> None:
        self.settings = settings
        self.clients = clients
        self.http = http
        self.metrics = metrics
        self._slots = asyncio.Semaphore(settings.max_concurrent_invocations)

    # -- staging ------------------------------------------------------------------

    async def image_value(self, data: bytes, key: str) -> str:
        """How one PNG appears in the request body, per ``image_encoding``."""
        encoding = self.settings.image_encoding
        if encoding == "base64":
            return base64.b64encode(data).decode()
        bucket = self.settings.bucket
        await self.clients.s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType="image/png")
        if encoding == "s3":
            return f"s3://{bucket}/{key}"
        url: str = await self.clients.s3.generate_presigned_url(
            ClientMethod="get_object",
            Params={"Bucket": bucket, "Key": key},
            ExpiresIn=self.settings.presign_expiry_s,
        )
        return url

    # -- invocation ---------------------------------------------------------------

    async def invoke(self, body: bytes, ctx: JobContext) -> tuple[bytes, str, dict[str, Any]]:
        """Run one inference: the answer, its content type, and how it went."""
        s = self.settings
        fits = len(body) <= SYNC_PAYLOAD_LIMIT
        async with self._slots:
            if s.endpoint_name and fits:
                try:
                    answer, content_type = await self._invoke_sync(s.endpoint_name, body, ctx)
                    return answer, content_type, {"mode": "sync", "endpoint": s.endpoint_name}
                except ModelTimeoutError:
                    if not s.async_endpoint_name:
                        raise
                    ctx.log.warning("sagemaker_sync_timeout_going_async")
            if s.async_endpoint_name:
                answer, info = await self._invoke_async(s.async_endpoint_name, body, ctx)
                return answer, "", info
        raise PermanentJobError(
            f"the request body is {len(body)} bytes, over the {SYNC_PAYLOAD_LIMIT}-byte limit of "
            "InvokeEndpoint, and no async_endpoint_name is configured; use image_encoding = "
            '"url" or "s3", or configure an asynchronous endpoint',
            code="sagemaker_payload_too_large",
        )

    async def _invoke_sync(self, endpoint: str, body: bytes, ctx: JobContext) -> tuple[bytes, str]:
        s = self.settings
        response = await self._call(
            endpoint,
            self.clients.runtime.invoke_endpoint,
            EndpointName=endpoint,
            Body=body,
            ContentType=s.content_type,
            Accept=s.accept,
            InferenceId=ctx.job_id[:64],
        )
        await ctx.progress(80, "answered")
        async with response["Body"] as stream:
            data: bytes = await stream.read()
        return data, str(response.get("ContentType") or "")

    async def _invoke_async(
        self, endpoint: str, body: bytes, ctx: JobContext
    ) -> tuple[bytes, dict[str, Any]]:
        s = self.settings
        key = f"{s.prefix}/async-inputs/{ctx.job_id}.json"
        await self.clients.s3.put_object(
            Bucket=s.bucket, Key=key, Body=body, ContentType=s.content_type
        )
        response = await self._call(
            endpoint,
            self.clients.runtime.invoke_endpoint_async,
            EndpointName=endpoint,
            InputLocation=f"s3://{s.bucket}/{key}",
            ContentType=s.content_type,
            Accept=s.accept,
            InferenceId=ctx.job_id[:64],
            InvocationTimeoutSeconds=s.async_invocation_timeout_s,
        )
        output = response.get("OutputLocation")
        failure = response.get("FailureLocation")
        if not output:
            raise TransientJobError(
                f"SageMaker endpoint {endpoint} accepted the request but named no output location",
                code="sagemaker_unavailable",
            )
        await ctx.progress(20, "queued at endpoint")
        info = {
            "mode": "async",
            "endpoint": endpoint,
            "inference_id": response.get("InferenceId"),
            "output_location": output,
        }
        return await self._watch(endpoint, output, failure), info

    async def _watch(self, endpoint: str, output: str, failure: str | None) -> bytes:
        """Poll the output and failure locations until one holds an object."""
        s = self.settings
        # SageMaker gives up on a request after its invocation timeout; a few
        # polls of slack cover the time it takes to write the failure.
        deadline = time.monotonic() + s.async_invocation_timeout_s + 10 * s.async_poll_interval_s
        while time.monotonic() < deadline:
            data = await self._read_if_present(output)
            if data is not None:
                return data
            if failure:
                text = await self._read_if_present(failure)
                if text is not None:
                    raise async_failure(text.decode(errors="replace"), endpoint, failure)
            await asyncio.sleep(s.async_poll_interval_s)
        raise TransientJobError(
            f"SageMaker endpoint {endpoint} wrote nothing to {output} within "
            f"{s.async_invocation_timeout_s} s",
            code="sagemaker_async_timeout",
        )

    async def _read_if_present(self, uri: str) -> bytes | None:
        bucket, key = split_s3_uri(uri)
        try:
            response = await self.clients.s3.get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            code, status = error_code(exc)
            if code in ("NoSuchKey", "404") or status == 404:
                return None
            if status == 403:
                raise PermanentJobError(
                    f"cannot read {uri}: access denied (the worker needs s3:GetObject and "
                    f"s3:ListBucket on bucket {bucket})",
                    code="sagemaker_output_denied",
                ) from exc
            raise TransientJobError(f"cannot read {uri}: {exc}", code="s3_unavailable") from exc
        async with response["Body"] as stream:
            data: bytes = await stream.read()
        return data

    async def _call(
        self, endpoint: str, method: Callable[..., Awaitable[Any]], **kwargs: Any
    ) -> Any:
        """One runtime call, retried with jittered exponential backoff where that can help."""
        s = self.settings
        for attempt in range(s.retries + 1):
            started = time.monotonic()
            try:
                response = await method(**kwargs)
            except ClientError as exc:
                _, status = error_code(exc)
                self._observe(f"{status // 100}xx", started, failed=True)
                if retryable(exc) and attempt < s.retries:
                    await asyncio.sleep(self._backoff(attempt))
                    continue
                raise map_client_error(exc, endpoint) from exc
            except ReadTimeoutError as exc:
                self._observe("timeout", started, failed=True)
                raise ModelTimeoutError(
                    f"SageMaker endpoint {endpoint} did not answer within {s.sync_timeout_s} s"
                ) from exc
            except _NETWORK_ERRORS as exc:
                self._observe("connection", started, failed=True)
                if attempt < s.retries:
                    await asyncio.sleep(self._backoff(attempt))
                    continue
                raise TransientJobError(
                    f"SageMaker runtime unreachable: {exc}", code="sagemaker_unavailable"
                ) from exc
            self._observe("2xx", started, failed=False)
            self.metrics.count_provider_usage(PROVIDER, "invocations", 1)
            return response
        raise AssertionError("unreachable")  # the loop returns or raises

    def _backoff(self, attempt: int) -> float:
        # Full jitter: workers throttled together do not come back together.
        cap = min(self.settings.backoff_max_s, self.settings.backoff_base_s * 2**attempt)
        return random.uniform(cap / 2, cap)

    def _observe(self, status_class: str, started: float, *, failed: bool) -> None:
        self.metrics.observe_provider_call(
            PROVIDER, status_class, time.monotonic() - started, failed=failed
        )

    # -- the answer -----------------------------------------------------------------

    async def image_from(self, answer: bytes, content_type: str) -> bytes:
        """The image in an endpoint's answer: the bytes themselves, or named in JSON."""
        if sniff_content_type(answer) in IMAGE_TYPES:
            return answer
        try:
            document = json.loads(answer)
        except ValueError:
            raise PermanentJobError(
                f"the endpoint answered neither an image nor JSON ({content_type or 'untyped'}, "
                f"{len(answer)} bytes): {answer[:200]!r}",
                code="sagemaker_bad_answer",
            ) from None
        s = self.settings
        if isinstance(document, Mapping):
            status = document.get(s.response_status_field)
            if isinstance(status, str) and status.lower() not in s.response_ok_statuses:
                message = document.get(s.response_message_field, "")
                raise PermanentJobError(
                    f"the endpoint answered {s.response_status_field}={status!r}: {message}",
                    code="sagemaker_model_refused",
                )
        value = _at(document, s.response_image_field)
        if not isinstance(value, str) or not value:
            keys = sorted(document) if isinstance(document, Mapping) else type(document).__name__
            raise PermanentJobError(
                f"the endpoint's answer has no image at {s.response_image_field!r} "
                f"(found: {keys}); set response_image_field",
                code="sagemaker_bad_answer",
            )
        data = await self._resolve(value)
        if sniff_content_type(data) not in IMAGE_TYPES:
            raise PermanentJobError(
                f"{s.response_image_field} in the endpoint's answer is not a PNG, JPEG or WebP",
                code="sagemaker_bad_answer",
            )
        return data

    async def _resolve(self, value: str) -> bytes:
        """A URL, ``s3://`` URI, ``data:`` URI or bare base64 → bytes."""
        if value.startswith(("https://", "http://")):
            # The endpoint is the operator's back end, so its URL is fetched
            # like one: through service_http, not the job-input fetcher.
            timeout = aiohttp.ClientTimeout(total=120)
            try:
                async with self.http.get(value, timeout=timeout) as response:
                    if response.status >= 500:
                        raise TransientJobError(
                            f"the endpoint's image URL answered {response.status}",
                            code="sagemaker_answer_unavailable",
                        )
                    if response.status != 200:
                        raise PermanentJobError(
                            f"the endpoint's image URL answered {response.status}",
                            code="sagemaker_bad_answer",
                        )
                    return await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise TransientJobError(
                    f"cannot fetch the endpoint's image URL: {exc!r}",
                    code="sagemaker_answer_unavailable",
                ) from exc
        if value.startswith("s3://"):
            data = await self._read_if_present(value)
            if data is None:
                raise PermanentJobError(f"the endpoint named {value}, which does not exist")
            return data
        payload = value.partition(",")[2] if value.startswith("data:") else value
        try:
            return base64.b64decode(payload, validate=True)
        except ValueError:
            raise PermanentJobError(
                "the endpoint's image is neither a URL nor base64", code="sagemaker_bad_answer"
            ) from None


def _at(document: Any, path: str) -> Any:
    """``images.0.url`` in nested objects and lists; ``None`` where it leads nowhere."""
    for part in path.split("."):
        if isinstance(document, Mapping):
            document = document.get(part)
        elif isinstance(document, list) and part.isdigit() and int(part) < len(document):
            document = document[int(part)]
        else:
            return None
    return document
