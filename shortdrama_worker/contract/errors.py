"""Errors a handler raises to tell the runner what to do with a job.

The runner never guesses: a ``PermanentJobError`` fails the job at once, a
``TransientJobError`` puts it back to ``pending`` with a backoff until the
attempts run out. Any other exception counts as transient, because an
unexpected crash is more often a flaky dependency than a bad input.
"""

from __future__ import annotations


class JobError(Exception):
    """Base of the errors a handler may raise; ``code`` is machine-readable."""

    code = "job_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class PermanentJobError(JobError):
    """Retrying cannot help: bad input, no face found, content refused."""

    code = "permanent_error"


class TransientJobError(JobError):
    """Worth retrying later: a dependency is down, overloaded or timed out."""

    code = "transient_error"

    def __init__(
        self, message: str, *, code: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class InputError(PermanentJobError):
    """An input (image URL, data URI, S3 object) could not be used.

    The message always names the field, so the editor knows which image to fix.
    """

    code = "invalid_input"

    def __init__(self, field: str, reason: str, *, code: str | None = None) -> None:
        super().__init__(f"{field}: {reason}", code=code)
        self.field = field
        self.reason = reason


class InputUnavailableError(TransientJobError):
    """An input could not be fetched right now (connection refused, 5xx, timeout)."""

    code = "input_unavailable"

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
