"""Start-up of the embedded endpoint with 1,000 jobs kept, against an empty one.

``python -m bench.embedded_state``. Each job is written as the daemon writes
it — PutItem, the claim, three progress updates, the completion — with a
staged input and a result file (64 KiB each). Timed: opening an empty state
directory (the baseline), replaying the journal a kill -9 leaves, writing the
snapshot of a clean stop, and replaying that snapshot.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from pathlib import Path

import boto3

from shortdrama_worker.aws.embedded import EmbeddedEndpoint
from shortdrama_worker.aws.localstate import StateDir

JOBS = 1000
FILE_BYTES = 64 * 1024


def _start(state_dir: Path) -> tuple[EmbeddedEndpoint, float]:
    endpoint = EmbeddedEndpoint(0, StateDir(state_dir, "us-east-1"))
    began = time.perf_counter()
    endpoint.start()
    return endpoint, time.perf_counter() - began


def _fill(url: str) -> None:
    kw = {"endpoint_url": url, "region_name": "us-east-1"}
    kw |= {"aws_access_key_id": "x", "aws_secret_access_key": "x"}
    db, s3 = boto3.client("dynamodb", **kw), boto3.client("s3", **kw)
    db.create_table(
        TableName="task_store",
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "task_id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "task_id", "KeyType": "HASH"}],
    )
    s3.create_bucket(Bucket="results")
    blob = os.urandom(FILE_BYTES)
    for _ in range(JOBS):
        task_id = str(uuid.uuid4())
        key = {"task_id": {"S": task_id}}
        db.put_item(TableName="task_store", Item={**key, "status": {"S": "pending"}})
        s3.put_object(Bucket="results", Key=f"inputs/{task_id}/image_url", Body=blob)
        for step in ("processing", "30", "60", "90", "completed"):
            db.update_item(
                TableName="task_store",
                Key=key,
                UpdateExpression="SET #s = :s",
                ExpressionAttributeNames={"#s": "status" if not step.isdigit() else "progress"},
                ExpressionAttributeValues={":s": {"S": step}},
            )
        s3.put_object(Bucket="results", Key=f"results/{task_id}/1/out.png", Body=blob)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        empty, baseline = _start(Path(tmp) / "empty")
        empty.stop()
        state = Path(tmp) / "kept"
        endpoint, _ = _start(state)
        _fill(endpoint.url)
        endpoint._server.shutdown()  # like kill -9: no snapshot, the journal stays
        endpoint._server.server_close()
        assert endpoint.state is not None and endpoint.state._lockfile is not None
        endpoint.state._lockfile.close()
        journal_mb = sum(p.stat().st_size for p in state.glob("journal-*")) / 1e6
        endpoint, from_journal = _start(state)
        began = time.perf_counter()
        endpoint.stop()  # a clean stop writes the snapshot
        snapshot_s = time.perf_counter() - began
        snapshot_mb = (state / "snapshot.jsonl").stat().st_size / 1e6
        endpoint, from_snapshot = _start(state)
        endpoint.stop()
    print(f"embedded state, {JOBS} jobs (2 files of {FILE_BYTES // 1024} KiB each)")
    print(f"{'':34}{'seconds':>9}{'× empty':>10}")
    rows = [
        ("start, empty state (baseline)", baseline),
        (f"start after kill -9 (journal {journal_mb:.0f} MB)", from_journal),
        ("clean stop: write snapshot", snapshot_s),
        (f"start from snapshot ({snapshot_mb:.0f} MB)", from_snapshot),
    ]
    for name, seconds in rows:
        print(f"{name:34}{seconds:9.2f}{seconds / max(baseline, 1e-3):10.0f}")


if __name__ == "__main__":
    main()
