"""Is the configured SageMaker set-up there? Checked, never created.

``shortdrama-compose check`` and the handler's start-up run the same
checks: each endpoint exists, is ``InService`` and is of the kind it is
configured as (real-time vs. asynchronous: SageMaker refuses the other
call), and the plugin's bucket is reachable. Each finding is one plain
sentence; GPU endpoints cost money by the hour, so creating one is left to
the operator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from shortdrama_compose.aws import Clients
from shortdrama_compose.model import SageMakerSettings
from shortdrama_compose.sm_errors import error_code

# An endpoint being updated keeps serving on its old configuration.
_SERVING = {"InService", "Updating", "SystemUpdating"}


@dataclass(frozen=True)
class Finding:
    ok: bool
    text: str
    blocking: bool = True
    """Whether jobs cannot succeed until it is fixed (else a warning)."""

    def __str__(self) -> str:
        label = "ok" if self.ok else ("missing" if self.blocking else "warning")
        return f"{label}: {self.text}"


async def check(settings: SageMakerSettings, clients: Clients) -> list[Finding]:
    findings = [await _bucket(settings, clients)]
    for name, want_async in (
        (settings.endpoint_name, False),
        (settings.async_endpoint_name, True),
    ):
        if name:
            findings += await _endpoint(settings, clients, name, want_async=want_async)
    return findings


def problems(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if not f.ok and f.blocking]


async def _bucket(settings: SageMakerSettings, clients: Clients) -> Finding:
    try:
        await clients.s3.head_bucket(Bucket=settings.bucket)
    except ClientError as exc:
        _, status = error_code(exc)
        why = "does not exist" if status == 404 else f"is not reachable ({status or exc})"
        return Finding(
            False,
            f"bucket {settings.bucket} {why}; create it (private, with a lifecycle rule "
            f"expiring {settings.prefix}/) and grant the worker deploy/aws/iam-policy-compose.json",
        )
    except BotoCoreError as exc:
        return Finding(False, f"S3 unreachable: {exc}")
    return Finding(True, f"bucket {settings.bucket} is reachable")


async def _endpoint(
    settings: SageMakerSettings, clients: Clients, name: str, *, want_async: bool
) -> list[Finding]:
    role = "async_endpoint_name" if want_async else "endpoint_name"
    try:
        endpoint = await clients.sagemaker.describe_endpoint(EndpointName=name)
    except ClientError as exc:
        code, _ = error_code(exc)
        if code == "ValidationException":
            return [
                Finding(
                    False,
                    f"endpoint {name} ({role}) does not exist in {settings.region}; create it "
                    "with your model (this plugin does not create GPU endpoints)",
                )
            ]
        return [Finding(False, f"cannot describe endpoint {name}: {exc}")]
    except BotoCoreError as exc:
        return [Finding(False, f"SageMaker unreachable: {exc}")]
    status = endpoint.get("EndpointStatus")
    if status not in _SERVING:
        reason = endpoint.get("FailureReason")
        return [
            Finding(
                False,
                f"endpoint {name} ({role}) is {status}, not InService"
                + (f": {reason}" if reason else ""),
            )
        ]
    findings = [Finding(status == "InService", f"endpoint {name} is {status}", blocking=False)]
    try:
        config = await clients.sagemaker.describe_endpoint_config(
            EndpointConfigName=endpoint["EndpointConfigName"]
        )
    except (ClientError, BotoCoreError) as exc:
        return [*findings, Finding(False, f"cannot read {name}'s configuration: {exc}")]
    return findings + _kind(settings, name, config, want_async=want_async)


def _kind(
    settings: SageMakerSettings, name: str, config: dict[str, Any], *, want_async: bool
) -> list[Finding]:
    async_config = config.get("AsyncInferenceConfig")
    if want_async and not async_config:
        return [
            Finding(
                False,
                f"endpoint {name} is real-time (no AsyncInferenceConfig); "
                "configure it as endpoint_name, or give an asynchronous endpoint",
            )
        ]
    if not want_async and async_config:
        return [
            Finding(
                False,
                f"endpoint {name} is asynchronous; configure it as async_endpoint_name "
                "(InvokeEndpoint is refused by asynchronous endpoints)",
            )
        ]
    if not async_config:
        return [Finding(True, f"endpoint {name} is real-time")]
    output = async_config.get("OutputConfig", {})
    findings = []
    for key in ("S3OutputPath", "S3FailurePath"):
        path = output.get(key)
        if path and not str(path).startswith(f"s3://{settings.bucket}/"):
            findings.append(
                Finding(
                    False,
                    f"endpoint {name} writes {key} to {path}, outside bucket {settings.bucket}: "
                    "the worker needs s3:GetObject and s3:ListBucket there too",
                    blocking=False,
                )
            )
    if not output.get("S3FailurePath"):
        findings.append(
            Finding(
                False,
                f"endpoint {name} has no S3FailurePath: a failed inference is only noticed "
                f"after async_invocation_timeout_s ({settings.async_invocation_timeout_s} s)",
                blocking=False,
            )
        )
    findings.append(Finding(True, f"endpoint {name} is asynchronous, output {output}"))
    return findings
