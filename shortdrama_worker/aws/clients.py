"""AWS clients (SQS, DynamoDB, S3) opened once per application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from shortdrama_worker.settings import AwsSettings


@dataclass(frozen=True)
class AwsClients:
    """The three clients the daemon uses; shared by the API, consumer and handlers."""

    sqs: Any
    dynamodb: Any
    s3: Any
    endpoint_url: str | None


def client_kwargs(aws: AwsSettings, endpoint_url: str | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"region_name": aws.region}
    if endpoint_url:
        kwargs["endpoint_url"] = endpoint_url
    if aws.access_key_id and aws.secret_access_key:
        kwargs["aws_access_key_id"] = aws.access_key_id.get_secret_value()
        kwargs["aws_secret_access_key"] = aws.secret_access_key.get_secret_value()
    elif endpoint_url:
        # A local endpoint (moto, LocalStack) accepts any credentials; without
        # some, botocore would refuse to sign before sending anything.
        kwargs["aws_access_key_id"] = "local"
        kwargs["aws_secret_access_key"] = "local"
    return kwargs


@asynccontextmanager
async def open_clients(aws: AwsSettings, endpoint_url: str | None) -> AsyncIterator[AwsClients]:
    """Open the clients; they close in reverse order when the block ends."""
    # The read timeout must outlast the long poll (WaitTimeSeconds ≤ 20 s).
    base = {
        "connect_timeout": aws.connect_timeout_s,
        "read_timeout": max(aws.read_timeout_s, 25.0),
        "retries": {"max_attempts": 3, "mode": "standard"},
        "max_pool_connections": aws.max_pool_connections,
    }
    # Path-style addressing works against every S3-compatible endpoint, and
    # keeps presigned URLs of a loopback endpoint reachable.
    s3_config = AioConfig(
        **base,
        signature_version="s3v4",
        s3={"addressing_style": "path" if endpoint_url else "auto"},
    )
    session = get_session()
    kwargs = client_kwargs(aws, endpoint_url)
    async with AsyncExitStack() as stack:
        sqs = await stack.enter_async_context(
            session.create_client("sqs", config=AioConfig(**base), **kwargs)
        )
        dynamodb = await stack.enter_async_context(
            session.create_client("dynamodb", config=AioConfig(**base), **kwargs)
        )
        s3 = await stack.enter_async_context(
            session.create_client("s3", config=s3_config, **kwargs)
        )
        yield AwsClients(sqs=sqs, dynamodb=dynamodb, s3=s3, endpoint_url=endpoint_url)


def error_code(exc: BaseException) -> str | None:
    """The AWS error code of a botocore ``ClientError``, if it is one."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        return str(code) if code is not None else None
    return None
