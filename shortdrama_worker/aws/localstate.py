"""Keeping the embedded endpoint's tables and files across restarts.

moto keeps everything in memory. Here every write that changes DynamoDB or
S3 (PutItem, UpdateItem, PutObject, CreateTable, …) is appended to a journal
in the state directory *before its answer leaves the endpoint*, so a daemon
killed with ``kill -9`` loses nothing it acknowledged. At start-up the last
snapshot and the journal are replayed into a fresh moto; at a clean stop the
current state is written as a new snapshot (a write per item and per object,
in the same format as the journal) and the journal starts empty.

Queues are not kept: on the embedded endpoint this daemon is the only
consumer, so after a restore every pending or running job is queued again
from the table (``requeue_unfinished``), which is the source of truth.

Files: ``snapshot.jsonl`` (first line: its generation), ``journal-<generation>.jsonl``,
``blobs-<generation>/`` and ``lock``. A journaled request body of 64 KiB or more
(an image put into S3) is written as a file of ``blobs-<generation>/`` before its
journal line, which names it: base64 inside JSON would cost the endpoint more CPU
than moto's own handling of the request. A crash during a snapshot leaves the
previous one in place.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import io
import json
import os
import shutil
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import structlog

log = structlog.get_logger("shortdrama_worker.aws.localstate")

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_DYNAMO_PREFIX = "DynamoDB_20120810."
_DYNAMO_CONTROL = {"CreateTable", "UpdateTable", "DeleteTable", "UpdateTimeToLive"}
_DYNAMO_WRITES = {
    "PutItem",
    "UpdateItem",
    "DeleteItem",
    "BatchWriteItem",
    "TransactWriteItems",
    *_DYNAMO_CONTROL,
}
_S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
# A journal this large is folded into the snapshot at the next start.
_COMPACT_JOURNAL_BYTES = 64 * 1024 * 1024
_BLOB_MIN_BYTES = 64 * 1024


class StateDirBusy(RuntimeError):
    """Another daemon holds the state directory."""


def _kind(entry: dict[str, Any]) -> str:
    """``control`` (tables, buckets), ``data`` (items, objects) or ``skip``."""
    target = entry["h"].get("X-Amz-Target", "")
    if target.startswith(_DYNAMO_PREFIX):
        op = target[len(_DYNAMO_PREFIX) :]
        if op not in _DYNAMO_WRITES:
            return "skip"
        return "control" if op in _DYNAMO_CONTROL else "data"
    if "/s3/aws4_request" not in entry["h"].get("Authorization", ""):
        return "skip"
    if entry["m"] not in ("PUT", "POST", "DELETE"):
        return "skip"
    path = entry["u"].split("?", 1)[0].strip("/")
    return "data" if "/" in path or entry["m"] == "POST" else "control"


def _entry(environ: dict[str, Any], body: bytes) -> dict[str, Any]:
    headers = {
        key[5:].replace("_", "-").title(): value
        for key, value in environ.items()
        if key.startswith("HTTP_")
    }
    if environ.get("CONTENT_TYPE"):
        headers["Content-Type"] = environ["CONTENT_TYPE"]
    headers["X-Amz-Target"] = environ.get("HTTP_X_AMZ_TARGET", "")
    headers["Authorization"] = environ.get("HTTP_AUTHORIZATION", "")
    uri = environ.get("REQUEST_URI") or quote(environ.get("PATH_INFO", "/"))
    if "?" not in uri and environ.get("QUERY_STRING"):
        uri += "?" + environ["QUERY_STRING"]
    return {"m": environ["REQUEST_METHOD"], "u": uri, "h": headers, "b": body}


def _encode(entry: dict[str, Any]) -> str:
    return json.dumps({**entry, "b": base64.b64encode(entry["b"]).decode()}) + "\n"


def _decode(line: str, blobs: Path | None = None) -> dict[str, Any]:
    """A journal or snapshot line; ``ValueError`` if it is torn or its blob is missing."""
    entry: dict[str, Any] = json.loads(line)
    if "f" in entry:
        if blobs is None or not isinstance(entry["f"], str) or "/" in entry["f"]:
            raise ValueError("a blob reference outside a journal")
        try:
            entry["b"] = (blobs / entry.pop("f")).read_bytes()
        except OSError as exc:
            raise ValueError(f"journal blob unreadable: {exc}") from None
    else:
        entry["b"] = base64.b64decode(entry["b"])
    return entry


def call(app: WsgiApp, entry: dict[str, Any]) -> tuple[int, bytes]:
    status, _, body = call_full(app, entry)
    return status, body


def call_full(app: WsgiApp, entry: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    """Run one recorded request against the moto application in this thread."""
    from werkzeug.test import EnvironBuilder, run_wsgi_app

    path, _, query = entry["u"].partition("?")
    headers = {k: v for k, v in entry["h"].items() if v and k not in ("Content-Length", "Host")}
    builder = EnvironBuilder(
        method=entry["m"],
        path=path,
        query_string=query,
        headers=headers,
        data=entry["b"],
        base_url="http://127.0.0.1/",
    )
    environ = builder.get_environ()
    environ["REQUEST_URI"] = environ["RAW_URI"] = entry["u"]
    body_iter, status, answer_headers = run_wsgi_app(app, environ)
    body = b"".join(body_iter)
    return int(status.split(" ", 1)[0]), dict(answer_headers.items()), body


class StateDir:
    """The journal and snapshot of one embedded endpoint, and the lock that makes it ours."""

    def __init__(self, path: Path, region: str) -> None:
        self.path = path
        self.region = region
        self._lock = threading.Lock()
        self._journal: IO[str] | None = None
        self._lockfile: IO[str] | None = None
        self.generation = 0
        self.restored_entries = 0

    # -- start and stop -------------------------------------------------------

    def open(self, app: WsgiApp) -> None:
        """Lock the directory, replay what it holds into ``app``, and start journaling."""
        self.path.mkdir(parents=True, exist_ok=True)
        self._lockfile = (self.path / "lock").open("w")
        try:
            fcntl.flock(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateDirBusy(
                f"state directory {self.path} is in use by another shortdrama-worker; "
                "stop it, or point local.state_dir (SHORTDRAMA_LOCAL__STATE_DIR) elsewhere"
            ) from None
        started = time.monotonic()
        snapshot = self.path / "snapshot.jsonl"
        failed = 0
        if snapshot.exists():
            with snapshot.open() as lines:
                header = json.loads(next(lines, '{"generation": 0}'))
                self.generation = int(header["generation"])
                failed += self._replay(app, lines)
        journal = self._journal_path(self.generation)
        if journal.exists():
            with journal.open() as lines:
                failed += self._replay(app, lines, self._blobs_path(self.generation))
        for stale in self.path.glob("journal-*.jsonl"):
            if stale != journal:
                stale.unlink()  # left by a snapshot that finished
        for stale in self.path.glob("blobs-*"):
            if stale != self._blobs_path(self.generation):
                shutil.rmtree(stale, ignore_errors=True)
        log.info(
            "embedded_state_restored",
            state_dir=str(self.path),
            requests=self.restored_entries,
            failed=failed,
            seconds=round(time.monotonic() - started, 3),
        )
        if journal.exists() and journal.stat().st_size > _COMPACT_JOURNAL_BYTES:
            self.snapshot(app)
        else:
            self._journal = journal.open("a")
            self._blobs_path(self.generation).mkdir(exist_ok=True)

    def close(self, app: WsgiApp) -> None:
        """Fold the journal into a new snapshot and release the directory."""
        try:
            self.snapshot(app)
        finally:
            if self._journal is not None:
                self._journal.close()
                self._journal = None
            if self._lockfile is not None:
                self._lockfile.close()
                self._lockfile = None

    def _journal_path(self, generation: int) -> Path:
        return self.path / f"journal-{generation}.jsonl"

    def _blobs_path(self, generation: int) -> Path:
        return self.path / f"blobs-{generation}"

    def _replay(self, app: WsgiApp, lines: Iterable[str], blobs: Path | None = None) -> int:
        failed = 0
        for line in lines:
            if not line.strip():
                continue
            try:
                entry = _decode(line, blobs)
            except ValueError:
                # A line cut short by a kill mid-write: it was never acknowledged.
                log.warning("embedded_state_torn_line_skipped")
                continue
            status, body = call(app, entry)
            self.restored_entries += 1
            if status >= 300:
                failed += 1
                log.debug("embedded_state_replay_refused", status=status, body=body[:200])
        return failed

    # -- the journal ----------------------------------------------------------

    def middleware(self, app: WsgiApp) -> WsgiApp:
        """Wrap moto's WSGI app: acknowledged writes reach the journal before their answer."""

        def journaled(
            environ: dict[str, Any], start_response: Callable[..., Any]
        ) -> Iterable[bytes]:
            probe = {
                "m": environ["REQUEST_METHOD"],
                "u": environ.get("REQUEST_URI") or environ.get("PATH_INFO", "/"),
                "h": {
                    "X-Amz-Target": environ.get("HTTP_X_AMZ_TARGET", ""),
                    "Authorization": environ.get("HTTP_AUTHORIZATION", ""),
                },
            }
            if _kind(probe) == "skip":
                return app(environ, start_response)
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length else b""
            environ["wsgi.input"] = io.BytesIO(body)
            seen: list[str] = []

            def remember(status: str, headers: Any, exc_info: Any = None) -> Any:
                seen.append(status)
                return start_response(status, headers, exc_info)

            # One write at a time, so the journal's order is the order moto applied them in.
            with self._lock:
                answer = list(app(environ, remember))
                if seen and int(seen[0].split(" ", 1)[0]) < 300 and self._journal is not None:
                    self._journal.write(self._line(_entry(environ, body)))
                    self._journal.flush()  # in the OS's hands: survives the process dying
            return answer

        return journaled

    def _line(self, entry: dict[str, Any]) -> str:
        """The journal line of ``entry``; a large body goes to a blob file first."""
        body: bytes = entry["b"]
        if len(body) < _BLOB_MIN_BYTES:
            return _encode(entry)
        name = uuid.uuid4().hex
        # Written before the line that names it, so a line never points at nothing.
        (self._blobs_path(self.generation) / name).write_bytes(body)
        return json.dumps({**entry, "b": None, "f": name}) + "\n"

    # -- snapshots ------------------------------------------------------------

    def snapshot(self, app: WsgiApp) -> None:
        """Write the current tables and buckets as a new snapshot; start a new journal."""
        with self._lock:
            started = time.monotonic()
            control = self._control_entries()
            target = self.path / "snapshot.jsonl.tmp"
            count = 0
            with target.open("w") as out:
                out.write(json.dumps({"generation": self.generation + 1}) + "\n")
                for entry in [*control, *self._items(app), *self._objects(app)]:
                    out.write(_encode(entry))
                    count += 1
                out.flush()
                os.fsync(out.fileno())
            old_journal = self._journal_path(self.generation)
            old_blobs = self._blobs_path(self.generation)
            os.replace(target, self.path / "snapshot.jsonl")
            self.generation += 1
            if self._journal is not None:
                self._journal.close()
            self._blobs_path(self.generation).mkdir(exist_ok=True)
            self._journal = self._journal_path(self.generation).open("a")
            with contextlib.suppress(FileNotFoundError):
                old_journal.unlink()
            shutil.rmtree(old_blobs, ignore_errors=True)
            log.info(
                "embedded_state_snapshot",
                state_dir=str(self.path),
                entries=count,
                seconds=round(time.monotonic() - started, 3),
            )

    def _control_entries(self) -> list[dict[str, Any]]:
        """Table and bucket creation as recorded, from the old snapshot and the journal."""
        found: list[dict[str, Any]] = []
        sources = [self.path / "snapshot.jsonl", self._journal_path(self.generation)]
        for source in sources:
            if not source.exists():
                continue
            with source.open() as lines:
                for number, line in enumerate(lines):
                    if source.name == "snapshot.jsonl" and number == 0:
                        continue
                    with contextlib.suppress(ValueError):
                        if _kind(json.loads(line)) == "control":  # no blob read for the rest
                            found.append(_decode(line, self._blobs_path(self.generation)))
        return found

    def _dynamo(self, op: str, payload: dict[str, Any]) -> dict[str, Any]:
        return {
            "m": "POST",
            "u": "/",
            "h": {
                "Content-Type": "application/x-amz-json-1.0",
                "X-Amz-Target": _DYNAMO_PREFIX + op,
                "Authorization": self._auth("dynamodb"),
            },
            "b": json.dumps(payload).encode(),
        }

    def _auth(self, service: str) -> str:
        # moto routes a request by the service named in its credential scope.
        return (
            f"AWS4-HMAC-SHA256 Credential=snapshot/20240101/{self.region}/{service}/aws4_request, "
            "SignedHeaders=host, Signature=0"
        )

    def _items(self, app: WsgiApp) -> Iterator[dict[str, Any]]:
        status, body = call(app, self._dynamo("ListTables", {}))
        tables = json.loads(body).get("TableNames", []) if status == 200 else []
        for table in tables:
            start: dict[str, Any] | None = None
            while True:
                query: dict[str, Any] = {"TableName": table, "Limit": 500}
                if start:
                    query["ExclusiveStartKey"] = start
                status, body = call(app, self._dynamo("Scan", query))
                page = json.loads(body)
                for item in page.get("Items", []):
                    yield self._dynamo("PutItem", {"TableName": table, "Item": item})
                start = page.get("LastEvaluatedKey")
                if status != 200 or not start:
                    break

    def _s3(self, method: str, path: str, body: bytes = b"", ctype: str = "") -> dict[str, Any]:
        headers = {"Authorization": self._auth("s3")}
        if ctype:
            headers["Content-Type"] = ctype
        return {"m": method, "u": path, "h": headers, "b": body}

    def _objects(self, app: WsgiApp) -> Iterator[dict[str, Any]]:
        status, body = call(app, self._s3("GET", "/"))
        buckets = (
            [n.text or "" for n in ET.fromstring(body).iter(f"{_S3_NS}Name")]
            if status == 200
            else []
        )
        for bucket in buckets:
            token = ""
            while True:
                query = "list-type=2" + (
                    f"&continuation-token={quote(token, safe='')}" if token else ""
                )
                status, body = call(app, self._s3("GET", f"/{bucket}?{query}"))
                if status != 200:
                    break
                listing = ET.fromstring(body)
                for key_node in listing.iter(f"{_S3_NS}Key"):
                    path = f"/{bucket}/{quote(key_node.text or '', safe='/')}"
                    status, headers, data = call_full(app, self._s3("GET", path))
                    if status == 200:
                        ctype = headers.get("Content-Type", "application/octet-stream")
                        yield self._s3("PUT", path, data, ctype)
                token = listing.findtext(f"{_S3_NS}NextContinuationToken") or ""
                if not token:
                    break
