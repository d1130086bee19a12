"""The plugin's own AWS clients: S3, the SageMaker control plane and sagemaker-runtime.

They come from the plugin's settings, not from the worker: the endpoint may
live in another account or region than the worker's queues, and the staging
bucket is the plugin's. Credentials: an access key pair or a named profile
in the settings, else the default chain (instance role, environment).
Each client may be pointed at its own endpoint URL (moto, a VPC endpoint).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession

from shortdrama_compose.model import SageMakerSettings

# botocore would retry throttling and 5xx itself; the plugin does, with its own
# backoff and metrics, so each client makes exactly one attempt per call.
_ONE_ATTEMPT = {"mode": "standard", "total_max_attempts": 1}


@dataclass(frozen=True)
class Clients:
    s3: Any
    runtime: Any
    """``sagemaker-runtime``: InvokeEndpoint, InvokeEndpointAsync."""
    sagemaker: Any
    """The control plane, read only: DescribeEndpoint, DescribeEndpointConfig."""


@contextlib.asynccontextmanager
async def open_clients(settings: SageMakerSettings) -> AsyncIterator[Clients]:
    session = AioSession(profile=settings.profile) if settings.profile else AioSession()
    credentials: dict[str, Any] = {}
    if settings.access_key_id is not None:
        credentials = {
            "aws_access_key_id": settings.access_key_id,
            "aws_secret_access_key": settings.secret_access_key,
            "aws_session_token": settings.session_token,
        }
    common = {"region_name": settings.region, **credentials}
    s3_config = AioConfig(
        retries=_ONE_ATTEMPT,
        connect_timeout=5,
        read_timeout=60,
        # Path style works with any S3-compatible endpoint and with dotted bucket names.
        s3={"addressing_style": "path" if settings.s3_endpoint_url else "auto"},
        signature_version="s3v4",
    )
    runtime_config = AioConfig(
        retries=_ONE_ATTEMPT,
        connect_timeout=5,
        # The model has 60 s; the read timeout sits a little above it.
        read_timeout=settings.sync_timeout_s,
        max_pool_connections=max(10, settings.max_concurrent_invocations),
    )
    control_config = AioConfig(retries=_ONE_ATTEMPT, connect_timeout=5, read_timeout=30)
    async with contextlib.AsyncExitStack() as stack:
        s3 = await stack.enter_async_context(
            session.create_client(
                "s3", endpoint_url=settings.s3_endpoint_url, config=s3_config, **common
            )
        )
        runtime = await stack.enter_async_context(
            session.create_client(
                "sagemaker-runtime",
                endpoint_url=settings.runtime_endpoint_url,
                config=runtime_config,
                **common,
            )
        )
        sagemaker = await stack.enter_async_context(
            session.create_client(
                "sagemaker",
                endpoint_url=settings.sagemaker_endpoint_url,
                config=control_config,
                **common,
            )
        )
        yield Clients(s3=s3, runtime=runtime, sagemaker=sagemaker)


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` → ``(bucket, key)``; ``ValueError`` otherwise."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    if not bucket or not key:
        raise ValueError(f"not an s3://bucket/key URI: {uri!r}")
    return bucket, key
