"""What each way an attempt can end means for the job and its message (pure decisions)."""

from __future__ import annotations

import time

import pytest

from shortdrama_worker.aws.store import Task
from shortdrama_worker.contract import PermanentJobError, TransientJobError
from shortdrama_worker.jobs.outcomes import (
    Cancelled,
    CancelReason,
    Disposition,
    Failed,
    Outcome,
    Succeeded,
    Write,
    decide_attempt,
    decide_refusal,
)

NOW = time.time()


def task(**fields: object) -> Task:
    base: dict[str, object] = {
        "task_id": "t1",
        "job_type": "face_mask",
        "status": "processing",
        "created_at": NOW - 60,
        "updated_at": NOW - 30,
        "resource": "cpu",
        "input": {},
        "attempts": 1,
    }
    return Task(**{**base, **fields})  # type: ignore[arg-type]


def test_success_completes_the_job_and_deletes_the_message() -> None:
    d = decide_attempt(Succeeded({"ok": True}), attempts=1, max_attempts=3, backoff_s=0)
    assert d.write is Write.COMPLETE and d.message is Disposition.DELETE
    assert d.outcome is Outcome.COMPLETED


def test_a_transient_error_is_retried_after_the_backoff_while_attempts_remain() -> None:
    error = TransientJobError("provider down", code="provider_unavailable")
    d = decide_attempt(Failed(error), attempts=2, max_attempts=3, backoff_s=7.5)
    assert (d.write, d.message, d.outcome) == (Write.RETRY_LATER, Disposition.HIDE, Outcome.RETRIED)
    assert d.delay_s == 7.5 and d.code == "provider_unavailable"


def test_the_last_transient_error_fails_the_job_into_the_dead_letter_queue() -> None:
    d = decide_attempt(Failed(TransientJobError("down")), attempts=3, max_attempts=3, backoff_s=9)
    assert (d.write, d.message, d.outcome) == (Write.FAIL, Disposition.DEAD_LETTER, Outcome.FAILED)
    assert d.text == "gave up after 3 attempts: down"


def test_a_permanent_error_fails_at_once_without_dead_lettering() -> None:
    error = PermanentJobError("no face found", code="no_face")
    d = decide_attempt(Failed(error), attempts=1, max_attempts=3, backoff_s=5)
    assert (d.write, d.message, d.outcome) == (Write.FAIL, Disposition.DELETE, Outcome.FAILED)
    assert (d.code, d.text) == ("no_face", "no face found")


@pytest.mark.parametrize(
    ("reason", "write", "message", "outcome"),
    [
        (CancelReason.REQUESTED, Write.CANCELLED, Disposition.DELETE, Outcome.CANCELLED),
        (CancelReason.SHUTDOWN, Write.RELEASE, Disposition.HAND_BACK, Outcome.RETURNED),
        # Another worker owns the job: nothing of ours is written or counted.
        (CancelReason.LEASE_LOST, Write.NONE, Disposition.LEAVE, None),
    ],
)
def test_each_cancel_reason_has_its_own_meaning(
    reason: CancelReason, write: Write, message: Disposition, outcome: Outcome | None
) -> None:
    d = decide_attempt(Cancelled(reason), attempts=1, max_attempts=3, backoff_s=0)
    assert (d.write, d.message, d.outcome) == (write, message, outcome)


def test_a_message_for_a_missing_record_is_deleted_uncounted() -> None:
    d = decide_refusal(None, kind="face_mask", now=NOW, max_attempts=3)
    assert (d.write, d.message, d.outcome) == (Write.NONE, Disposition.DELETE, None)


def test_a_message_whose_kind_disagrees_with_its_record_is_dead_lettered() -> None:
    d = decide_refusal(task(), kind="face_swap", now=NOW, max_attempts=3)
    assert d.message is Disposition.DEAD_LETTER and "face_swap" in (d.text or "")


def test_a_duplicate_of_a_finished_job_is_deleted() -> None:
    d = decide_refusal(task(status="completed"), kind="face_mask", now=NOW, max_attempts=3)
    assert (d.write, d.message, d.outcome) == (Write.NONE, Disposition.DELETE, None)


def test_a_copy_of_a_running_job_hides_until_its_lease_would_end() -> None:
    running = task(owner="other", lease_until=NOW + 40)
    d = decide_refusal(running, kind="face_mask", now=NOW, max_attempts=3)
    assert d.message is Disposition.HIDE and d.delay_s == pytest.approx(41)


def test_a_cancel_requested_between_runs_settles_as_cancelled() -> None:
    pending = task(status="pending", cancel_requested=True)
    d = decide_refusal(pending, kind="face_mask", now=NOW, max_attempts=3)
    assert (d.write, d.outcome) == (Write.SETTLE_CANCEL, Outcome.CANCELLED)


def test_an_abandoned_job_out_of_attempts_fails_instead_of_staying_processing() -> None:
    dead = task(attempts=3, owner="gone", lease_until=NOW - 5, error_message="worker lost")
    d = decide_refusal(dead, kind="face_mask", now=NOW, max_attempts=3)
    assert (d.write, d.message, d.outcome) == (
        Write.FAIL_ABANDONED,
        Disposition.DEAD_LETTER,
        Outcome.FAILED,
    )
    assert d.text == "gave up after 3 attempts; last error: worker lost"


def test_outcome_labels_are_the_metric_labels() -> None:
    from shortdrama_worker.metrics import Metrics

    metrics = Metrics()
    metrics.declare_kinds(["face_mask"], [o.value for o in Outcome])
    labels = {
        s.labels["outcome"]
        for family in metrics.registry.collect()
        if family.name == "shortdrama_jobs_finished"
        for s in family.samples
    }
    assert labels == {o.value for o in Outcome}
