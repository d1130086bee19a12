"""The embedded endpoint's journal: large bodies as blob files, replayed after kill -9."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

from shortdrama_worker.aws.localstate import StateDir, call_full


def _s3(method: str, path: str, body: bytes = b"") -> dict[str, Any]:
    auth = (
        "AWS4-HMAC-SHA256 Credential=test/20240101/us-east-1/s3/aws4_request, "
        "SignedHeaders=host, Signature=0"
    )
    return {"m": method, "u": path, "h": {"Authorization": auth}, "b": body}


def _killed(state: StateDir) -> None:
    """What kill -9 leaves: the journal as flushed, no snapshot, the lock released."""
    assert state._journal is not None and state._lockfile is not None
    state._journal.close()
    state._lockfile.close()


def test_a_large_object_is_journaled_as_a_blob_and_comes_back_after_a_kill(
    tmp_path: Path,
) -> None:
    # moto's backends are per process and shared with this session's endpoint,
    # so the test uses its own bucket and deletes behind the journal's back.
    app = DomainDispatcherApplication(create_backend_app)
    bucket = f"journal-{uuid.uuid4().hex[:12]}"
    image, note = os.urandom(300_000), b"small"
    state = StateDir(tmp_path, "us-east-1")
    state.open(app)
    journaled = state.middleware(app)
    for request in (
        _s3("PUT", f"/{bucket}"),
        _s3("PUT", f"/{bucket}/inputs/frame.png", image),
        _s3("PUT", f"/{bucket}/note.txt", note),
    ):
        status, _, _ = call_full(journaled, request)
        assert status == 200
    _killed(state)

    blobs = list((tmp_path / "blobs-0").iterdir())
    assert [b.read_bytes() for b in blobs] == [image]  # the big body, as it came
    journal = (tmp_path / "journal-0.jsonl").read_bytes()
    assert len(journal) < 4096  # three lines, no base64 of 300 kB
    for key in ("inputs/frame.png", "note.txt"):  # gone from moto, not from the journal
        assert call_full(app, _s3("DELETE", f"/{bucket}/{key}"))[0] == 204

    restored = StateDir(tmp_path, "us-east-1")
    restored.open(app)
    assert restored.restored_entries == 3
    assert call_full(app, _s3("GET", f"/{bucket}/inputs/frame.png"))[2] == image
    assert call_full(app, _s3("GET", f"/{bucket}/note.txt"))[2] == note
    _killed(restored)


def test_a_journal_line_whose_blob_is_missing_is_skipped_and_the_rest_replays(
    tmp_path: Path,
) -> None:
    app = DomainDispatcherApplication(create_backend_app)
    bucket = f"journal-{uuid.uuid4().hex[:12]}"
    state = StateDir(tmp_path, "us-east-1")
    state.open(app)
    journaled = state.middleware(app)
    for request in (
        _s3("PUT", f"/{bucket}"),
        _s3("PUT", f"/{bucket}/lost.png", os.urandom(100_000)),
        _s3("PUT", f"/{bucket}/kept.txt", b"kept"),
    ):
        assert call_full(journaled, request)[0] == 200
    _killed(state)
    for blob in (tmp_path / "blobs-0").iterdir():
        blob.unlink()
    call_full(app, _s3("DELETE", f"/{bucket}/kept.txt"))

    restored = StateDir(tmp_path, "us-east-1")
    restored.open(app)
    assert restored.restored_entries == 2  # the bucket and kept.txt
    assert call_full(app, _s3("GET", f"/{bucket}/kept.txt"))[2] == b"kept"
    _killed(restored)
