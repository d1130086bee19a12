"""The Celery side of ``bench/celery_compare.py``: one no-op task on kombu's SQS transport.

Configured from environment variables so the bench process (producer) and the
``celery worker`` subprocess build the same app against the same moto server.
Results go to Celery's DynamoDB result backend on that server, so a client
learns of completion the way ours does: by reading a DynamoDB record.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from celery import Celery

ENDPOINT = os.environ.get("BENCH_ENDPOINT", "http://127.0.0.1:5000")
QUEUE = os.environ.get("BENCH_CELERY_QUEUE", "celery-bench")
QUEUE_URL = os.environ.get("BENCH_CELERY_QUEUE_URL", f"{ENDPOINT}/123456789012/{QUEUE}")
TABLE = os.environ.get("BENCH_CELERY_TABLE", "celery-bench-results")
POOL = int(os.environ.get("BENCH_CELERY_POOL_LIMIT", "16"))
# "equal": the guarantees ours gives (a task is acknowledged only after it ran,
# a worker lost mid-task hands it back, the record says "started"); anything
# else: Celery's defaults (acknowledged before it runs: a crash loses it).
GUARANTEES = os.environ.get("BENCH_CELERY_GUARANTEES", "default")

_host = urlsplit(ENDPOINT)

app = Celery("bench")
app.conf.update(
    # kombu builds the SQS endpoint from the URL's host and port; is_secure=False
    # makes it http://, which moto's server speaks.
    broker_url=f"sqs://local:local@{_host.hostname}:{_host.port}",
    broker_transport_options={
        "region": "us-east-1",
        "is_secure": False,
        # predefined_queues: kombu neither lists nor creates queues; as in production.
        "predefined_queues": {
            QUEUE: {"url": QUEUE_URL, "access_key_id": "local", "secret_access_key": "local"}
        },
    },
    broker_connection_retry_on_startup=True,
    # One producer connection per submitter thread, so submitters never wait on the pool.
    broker_pool_limit=POOL,
    result_backend=f"dynamodb://local:local@us-east-1/{TABLE}",
    dynamodb_endpoint_url=ENDPOINT,
    task_default_queue=QUEUE,
    worker_hijack_root_logger=True,
)
if GUARANTEES == "equal":
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_track_started=True,
    )


@app.task(name="bench.noop")
def noop(n: int) -> dict[str, Any]:
    """The same no-op as ours: return an empty result."""
    return {}
