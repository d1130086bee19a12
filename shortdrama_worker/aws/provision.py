"""``init``: create the queues, DLQs, table and bucket, idempotently.

The same code provisions real AWS (with the provisioning IAM policy) and the
embedded endpoint, so the local profile runs exactly what production runs.
"""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError

from shortdrama_worker.aws.clients import AwsClients, error_code
from shortdrama_worker.settings import RESOURCES, Resource, Settings


async def provision(clients: AwsClients, settings: Settings) -> list[str]:
    """Create what is missing; return one line per resource, saying what was done."""
    report = []
    for resource in RESOURCES:
        report += await _queue_pair(clients.sqs, settings, resource)
    report += await _table(clients.dynamodb, settings)
    report.append(await _bucket(clients.s3, settings))
    return report


async def _queue_pair(sqs: Any, settings: Settings, resource: Resource) -> list[str]:
    queue_name = settings.queue_name(resource)
    dlq_name = settings.dlq_name(resource)
    dlq = await sqs.create_queue(
        QueueName=dlq_name, Attributes={"MessageRetentionPeriod": str(14 * 86400)}
    )
    dlq_attrs = await sqs.get_queue_attributes(
        QueueUrl=dlq["QueueUrl"], AttributeNames=["QueueArn"]
    )
    redrive = {
        "deadLetterTargetArn": dlq_attrs["Attributes"]["QueueArn"],
        "maxReceiveCount": str(settings.queues.max_receive_count),
    }
    attributes = {
        "VisibilityTimeout": str(settings.queues.visibility_timeout_s),
        "ReceiveMessageWaitTimeSeconds": str(settings.queues.wait_time_s),
        "MessageRetentionPeriod": str(4 * 86400),
        "RedrivePolicy": json.dumps(redrive),
    }
    try:
        queue = await sqs.create_queue(QueueName=queue_name, Attributes=attributes)
        state = "ready"
    except ClientError as exc:
        # An existing queue with other attributes: CreateQueue refuses, so
        # bring its attributes up to date instead of failing.
        if error_code(exc) not in ("QueueAlreadyExists", "QueueNameExists"):
            raise
        queue = await sqs.get_queue_url(QueueName=queue_name)
        await sqs.set_queue_attributes(QueueUrl=queue["QueueUrl"], Attributes=attributes)
        state = "updated"
    return [f"queue {dlq_name}: ready", f"queue {queue_name}: {state} (DLQ {dlq_name})"]


async def _table(db: Any, settings: Settings) -> list[str]:
    table = settings.store.table
    try:
        await db.create_table(
            TableName=table,
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[
                {"AttributeName": "task_id", "AttributeType": "S"},
                {"AttributeName": "status", "AttributeType": "S"},
                {"AttributeName": "created_at", "AttributeType": "N"},
            ],
            KeySchema=[{"AttributeName": "task_id", "KeyType": "HASH"}],
            GlobalSecondaryIndexes=[
                {
                    "IndexName": settings.store.status_index,
                    "KeySchema": [
                        {"AttributeName": "status", "KeyType": "HASH"},
                        {"AttributeName": "created_at", "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "ALL"},
                }
            ],
        )
        state = "created"
    except ClientError as exc:
        if error_code(exc) != "ResourceInUseException":
            raise
        state = "exists"
    waiter = db.get_waiter("table_exists")
    await waiter.wait(TableName=table, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    ttl = await db.describe_time_to_live(TableName=table)
    if ttl["TimeToLiveDescription"].get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
        await db.update_time_to_live(
            TableName=table,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"},
        )
    return [f"table {table}: {state} (GSI {settings.store.status_index}, TTL expires_at)"]


async def _bucket(s3: Any, settings: Settings) -> str:
    bucket = settings.results.bucket
    try:
        await s3.head_bucket(Bucket=bucket)
        return f"bucket {bucket}: exists"
    except ClientError as exc:
        if error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
            raise
    kwargs: dict[str, Any] = {"Bucket": bucket}
    region = settings.aws.region
    if region != "us-east-1":  # us-east-1 rejects an explicit LocationConstraint
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    await s3.create_bucket(**kwargs)
    return f"bucket {bucket}: created"
