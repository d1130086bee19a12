"""How sagemaker-runtime's answers map onto the runner's permanent/transient split.

Each error says what a retry could change:

* ``ModelError`` (424) carries the container's own status (``OriginalStatusCode``)
  and message. A 4xx from the model means it refused this input: permanent.
  408/429/502/503/504, a container that ran out of GPU memory, or SageMaker's
  60 s limit (status 0, "Your invocation timed out ...") can pass: transient
  (a timeout moves the request to the asynchronous endpoint when there is one).
  Any other 5xx is the model failing on this input: permanent.
* ``ValidationError`` (400): an unknown endpoint, a real-time call to an
  asynchronous endpoint, a body too large: the configuration or the request
  is wrong, and stays wrong: permanent.
* Throttling, ``ModelNotReadyException`` (429), ``ServiceUnavailable``,
  ``InternalFailure``, ``InternalDependencyException``: retried in place with
  backoff, then transient.
* Credentials refused: permanent (an operator must fix them), except an
  expired token, which the chain renews: transient.
"""

from __future__ import annotations

from typing import Any

from shortdrama_worker.contract import JobError, PermanentJobError, TransientJobError

THROTTLING = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "ProvisionedThroughputExceededException",
    }
)
RETRYABLE = THROTTLING | {
    "ModelNotReadyException",
    "ServiceUnavailable",
    "InternalFailure",
    "InternalDependencyException",
}
_TRANSIENT_MODEL_STATUS = frozenset({408, 429, 502, 503, 504})
_OUT_OF_MEMORY = ("out of memory", "OutOfMemoryError", "CUBLAS_STATUS_ALLOC")
_EXPIRED = frozenset({"ExpiredToken", "ExpiredTokenException", "RequestExpired"})


class ModelTimeoutError(TransientJobError):
    """The container did not answer within SageMaker's 60 s."""

    code = "sagemaker_model_timeout"


def error_code(exc: Any) -> tuple[str, int]:
    """The error code and HTTP status of a botocore ``ClientError``."""
    response = getattr(exc, "response", {}) or {}
    code = str(response.get("Error", {}).get("Code") or "")
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    return code, status


def retryable(exc: Any) -> bool:
    code, status = error_code(exc)
    return code in RETRYABLE or (status >= 500 and code != "ModelError")


def map_client_error(exc: Any, endpoint: str) -> JobError:
    """The runner's error for a ``ClientError`` from ``endpoint`` (retries already spent)."""
    code, status = error_code(exc)
    response = getattr(exc, "response", {}) or {}
    message = str(response.get("Error", {}).get("Message") or exc)
    if code == "ModelError":
        return model_error(response, endpoint, message)
    if code == "ValidationError":
        not_found = "not found" in message.lower() or "could not find" in message.lower()
        return PermanentJobError(
            f"SageMaker endpoint {endpoint} refused the request: {message}",
            code="sagemaker_endpoint_not_found" if not_found else "sagemaker_validation_error",
        )
    if code in RETRYABLE or status >= 500 or status == 429:
        return TransientJobError(
            f"SageMaker endpoint {endpoint} is busy or unavailable ({code or status}): {message}",
            code="sagemaker_unavailable",
        )
    if code in _EXPIRED:
        return TransientJobError(f"AWS credentials expired: {message}", code="aws_credentials")
    if status == 413:
        return PermanentJobError(
            f"SageMaker endpoint {endpoint}: request body too large ({message})",
            code="sagemaker_payload_too_large",
        )
    return PermanentJobError(
        f"SageMaker endpoint {endpoint} refused the call ({code or status}): {message}",
        code="sagemaker_refused",
    )


def model_error(response: Any, endpoint: str, message: str) -> JobError:
    original = response.get("OriginalStatusCode")
    original_message = str(response.get("OriginalMessage") or message)
    logs = response.get("LogStreamArn")
    where = f" (logs: {logs})" if logs else ""
    text = (
        f"SageMaker endpoint {endpoint}: the model answered {original}: "
        f"{original_message[:1000]}{where}"
    )
    status = int(original) if isinstance(original, int | str) and str(original).isdigit() else 0
    if status == 0 and "timed out" in message.lower():
        return ModelTimeoutError(
            f"SageMaker endpoint {endpoint}: the model did not answer within 60 s{where}"
        )
    if status in _TRANSIENT_MODEL_STATUS or any(m in original_message for m in _OUT_OF_MEMORY):
        return TransientJobError(text, code="sagemaker_model_busy")
    return PermanentJobError(text, code="sagemaker_model_error")


def async_failure(text: str, endpoint: str, location: str) -> JobError:
    """The error for what an asynchronous inference wrote to its failure location."""
    message = (
        f"SageMaker endpoint {endpoint}: the asynchronous inference failed "
        f"({location}): {text[:1000]}"
    )
    if "timed out" in text.lower() or any(m in text for m in _OUT_OF_MEMORY):
        return TransientJobError(message, code="sagemaker_async_failed")
    return PermanentJobError(message, code="sagemaker_async_failed")
