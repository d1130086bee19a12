"""What a message means for its job: pure decisions, applied elsewhere.

Two functions decide everything the consumer does with an SQS message:
``decide_attempt`` for a run that ended (succeeded, failed, was cancelled),
``decide_refusal`` for a message whose claim was refused. Each returns a
``Decision``: the record write, what happens to the message, and the outcome
to count. They read nothing and write nothing, so every branch is a plain
unit test; ``settle.Settler`` is the one place that applies a decision.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from shortdrama_worker.aws.store import Task
from shortdrama_worker.contract import JobError, TransientJobError


class Outcome(enum.StrEnum):
    """How one attempt ended; the ``outcome`` label of the job metrics."""

    COMPLETED = "completed"
    FAILED = "failed"
    RETRIED = "retried"
    CANCELLED = "cancelled"
    RETURNED = "returned"


class CancelReason(enum.StrEnum):
    """Why a running attempt was cancelled."""

    REQUESTED = "cancelled"
    """A client asked for it (``DELETE /api/v1/jobs/{id}``)."""
    LEASE_LOST = "lost"
    """Another worker owns the job now; its outcome counts, not ours."""
    SHUTDOWN = "shutdown"
    """This process is stopping; the job goes back to the queue at once."""


class Write(enum.Enum):
    """The record write a decision asks for."""

    NONE = enum.auto()
    COMPLETE = enum.auto()
    FAIL = enum.auto()
    RETRY_LATER = enum.auto()
    CANCELLED = enum.auto()
    RELEASE = enum.auto()
    SETTLE_CANCEL = enum.auto()
    FAIL_ABANDONED = enum.auto()


class Disposition(enum.Enum):
    """What happens to the SQS message."""

    DELETE = enum.auto()
    HIDE = enum.auto()
    """Change its visibility to ``Decision.delay_s``: it comes back then."""
    HAND_BACK = enum.auto()
    """Visible again at once, for another instance."""
    DEAD_LETTER = enum.auto()
    LEAVE = enum.auto()
    """Untouched: its visibility timeout brings it back."""


@dataclass(frozen=True)
class Succeeded:
    result: dict[str, Any]


@dataclass(frozen=True)
class Failed:
    error: JobError


@dataclass(frozen=True)
class Cancelled:
    reason: CancelReason


Attempt = Succeeded | Failed | Cancelled


@dataclass(frozen=True)
class Decision:
    """What to do; ``outcome`` is ``None`` when nothing is counted or logged."""

    write: Write
    message: Disposition
    outcome: Outcome | None
    delay_s: float = 0.0
    code: str | None = None
    text: str | None = None
    """The error text recorded on the job (and the dead-letter reason)."""
    log_event: str | None = None


def decide_attempt(
    attempt: Attempt, *, attempts: int, max_attempts: int, backoff_s: float
) -> Decision:
    """What a finished run means. ``backoff_s`` is the delay a retry would get."""
    if isinstance(attempt, Succeeded):
        return Decision(Write.COMPLETE, Disposition.DELETE, Outcome.COMPLETED)
    if isinstance(attempt, Cancelled):
        if attempt.reason is CancelReason.REQUESTED:
            return Decision(Write.CANCELLED, Disposition.DELETE, Outcome.CANCELLED)
        if attempt.reason is CancelReason.LEASE_LOST:
            return Decision(Write.NONE, Disposition.LEAVE, None, log_event="result_discarded")
        return Decision(Write.RELEASE, Disposition.HAND_BACK, Outcome.RETURNED)
    error = attempt.error
    if not isinstance(error, TransientJobError):
        return Decision(
            Write.FAIL, Disposition.DELETE, Outcome.FAILED, code=error.code, text=error.message
        )
    if attempts < max_attempts:
        return Decision(
            Write.RETRY_LATER,
            Disposition.HIDE,
            Outcome.RETRIED,
            delay_s=backoff_s,
            code=error.code,
            text=error.message,
        )
    text = f"gave up after {attempts} attempts: {error.message}"
    return Decision(Write.FAIL, Disposition.DEAD_LETTER, Outcome.FAILED, code=error.code, text=text)


def decide_refusal(task: Task | None, *, kind: str, now: float, max_attempts: int) -> Decision:
    """What a message means when the claim of its job was refused; the record says why."""
    if task is None:
        # The API removes a record whose message failed to queue; a message
        # can still surface if SQS accepted it after reporting an error.
        return Decision(Write.NONE, Disposition.DELETE, None, log_event="message_for_unknown_task")
    if task.job_type != kind:
        text = f"message kind {kind!r} != task kind {task.job_type!r}"
        return Decision(Write.NONE, Disposition.DEAD_LETTER, None, text=text)
    if task.cancel_requested and not task.terminal and not task.lease_live(now):
        return Decision(Write.SETTLE_CANCEL, Disposition.DELETE, Outcome.CANCELLED)
    if task.terminal:
        return Decision(
            Write.NONE, Disposition.DELETE, None, log_event="duplicate_message_for_finished_job"
        )
    if task.lease_live(now):
        # Someone is running it. Deleting this copy could lose the job if
        # that worker dies; hide it until the lease would have run out.
        remaining = (task.lease_until or now) - now
        return Decision(
            Write.NONE,
            Disposition.HIDE,
            None,
            delay_s=remaining + 1,
            log_event="job_owned_elsewhere",
        )
    if task.attempts >= max_attempts:
        # Out of attempts and nobody runs it: e.g. its last worker was killed
        # mid-run. It must not stay `processing` forever.
        last = task.error_message or "worker lost mid-run"
        text = f"gave up after {task.attempts} attempts; last error: {last}"
        return Decision(
            Write.FAIL_ABANDONED,
            Disposition.DEAD_LETTER,
            Outcome.FAILED,
            code="attempts_exhausted",
            text=text,
        )
    # A race with another claimant; look again shortly.
    return Decision(Write.NONE, Disposition.HIDE, None, delay_s=5)
