"""deploy/aws: the IAM policies grant exactly the AWS calls the code makes.

The calls are found in the source, not listed by hand: every attribute read on
an SQS, DynamoDB or S3 client (``await self._sqs.receive_message(...)``, or a
bound method handed to a helper, ``self._call(..., self._sqs.send_message)``)
whose name is an operation in botocore's model of that service. Waiters,
paginators and presigned URLs map to the operation they run.

Plugin distributions in ``plugins/`` that call AWS with clients of their own
are scanned the same way, each against its own policy file (the host's
policies do not grant what a plugin calls). The scan reads their source; it
imports nothing of them.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import botocore.exceptions
import botocore.session
import pytest
from botocore import xform_name

from shortdrama_worker.settings import RESOURCES, Settings

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "shortdrama_worker"
RUNTIME_POLICY = ROOT / "deploy" / "aws" / "iam-policy.json"
PROVISION_POLICY = ROOT / "deploy" / "aws" / "iam-provision-policy.json"
# `shortdrama-worker init` runs these modules with the provisioning policy;
# everything else runs in the daemon with the runtime policy.
PROVISION_MODULES = {"provision.py"}

SERVICES = ("sqs", "dynamodb", "s3")
# How code in this package names its clients (attribute or variable).
RECEIVERS = {"sqs": "sqs", "dynamodb": "dynamodb", "db": "dynamodb", "ddb": "dynamodb", "s3": "s3"}
# S3 API operations authorised by an IAM action of another name.
S3_ACTIONS = {
    "HeadBucket": "ListBucket",
    "ListObjects": "ListBucket",
    "ListObjectsV2": "ListBucket",
    "HeadObject": "GetObject",
    "CreateMultipartUpload": "PutObject",
    "UploadPart": "PutObject",
    "CompleteMultipartUpload": "PutObject",
    "DeleteObjects": "DeleteObject",
    "PutBucketLifecycleConfiguration": "PutLifecycleConfiguration",
    "PutPublicAccessBlock": "PutBucketPublicAccessBlock",
    "PutBucketEncryption": "PutEncryptionConfiguration",
}
# SQS batch calls are authorised by the single call's action
# (https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-api-permissions-reference.html).
SQS_ACTIONS = {
    "DeleteMessageBatch": "DeleteMessage",
    "SendMessageBatch": "SendMessage",
    "ChangeMessageVisibilityBatch": "ChangeMessageVisibility",
}
# Operation names that are also everyday attributes elsewhere (request.query).
COMMON_WORDS = {"query"}
# Services whose IAM action prefix is not their botocore name.
IAM_PREFIX = {"sagemaker-runtime": "sagemaker"}

# Plugins with AWS clients of their own: package → (its policy, its services,
# how its code names its clients).
PLUGINS = {
    ROOT / "plugins" / "compose" / "shortdrama_compose": (
        ROOT / "deploy" / "aws" / "iam-policy-compose.json",
        ("s3", "sagemaker", "sagemaker-runtime"),
        {"s3": "s3", "sagemaker": "sagemaker", "runtime": "sagemaker-runtime"},
    ),
}


@dataclass(frozen=True)
class Call:
    action: str  # "sqs:SendMessage"
    where: str  # "queue.py:79"


def _models(services: tuple[str, ...] = SERVICES) -> dict[str, Any]:
    session = botocore.session.get_session()
    models: dict[str, Any] = {}
    for service in services:
        try:
            waiters = session.get_waiter_model(service)
        except botocore.exceptions.UnknownServiceError:  # SQS has no waiters
            waiters = None
        ops = session.get_service_model(service).operation_names
        models[service] = {"ops": {xform_name(op): op for op in ops}, "waiters": waiters}
    return models


def _action(service: str, operation: str) -> str:
    if service == "s3":
        operation = S3_ACTIONS.get(operation, operation)
    if service == "sqs":
        operation = SQS_ACTIONS.get(operation, operation)
    return f"{IAM_PREFIX.get(service, service)}:{operation}"


def _service_of(receiver: ast.expr, receivers: dict[str, str] = RECEIVERS) -> str | None:
    if isinstance(receiver, ast.Attribute):
        name = receiver.attr
    elif isinstance(receiver, ast.Name):
        name = receiver.id
    else:
        return None
    return receivers.get(name.lstrip("_").lower())


def _first_string(call: ast.Call, keyword: str) -> str | None:
    for kw in call.keywords:
        if kw.arg == keyword and isinstance(kw.value, ast.Constant):
            return str(kw.value.value)
    if call.args and isinstance(call.args[0], ast.Constant):
        return str(call.args[0].value)
    return None


def _scan(
    path: Path,
    models: dict[str, Any],
    root: Path = PACKAGE,
    receivers: dict[str, str] = RECEIVERS,
) -> Iterator[Call | str]:
    """AWS calls in one module; a string for an operation on an unknown receiver."""
    tree = ast.parse(path.read_text(), filename=str(path))
    all_ops = {op for m in models.values() for op in m["ops"]}
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        where = f"{path.relative_to(root)}:{node.lineno}"
        service = _service_of(node.value, receivers)
        if service is None:
            if node.attr in all_ops and node.attr not in COMMON_WORDS:
                yield f"{where}: .{node.attr} on {ast.unparse(node.value)!r}"
            continue
        model = models[service]
        call = parents.get(node)
        helper = node.attr in {"get_waiter", "get_paginator", "generate_presigned_url"}
        if helper and isinstance(call, ast.Call) and call.func is node:
            if node.attr == "get_waiter":
                name = _first_string(call, "waiter_name")
                waiters = model["waiters"]
                by_snake = {xform_name(w): w for w in (waiters.waiter_names if waiters else [])}
                assert name in by_snake, f"{where}: unknown waiter {name!r}"
                operation = waiters.get_waiter(by_snake[name]).operation
            else:
                key = "ClientMethod" if node.attr == "generate_presigned_url" else "operation_name"
                name = _first_string(call, key)
                assert name in model["ops"], f"{where}: cannot tell what {node.attr} runs"
                operation = model["ops"][name]
            yield Call(_action(service, operation), where)
        elif node.attr in model["ops"]:
            yield Call(_action(service, model["ops"][node.attr]), where)


def _calls() -> tuple[dict[str, list[str]], dict[str, list[str]], list[str]]:
    """(runtime action -> places, provisioning action -> places, unknown receivers)."""
    models = _models()
    runtime: dict[str, list[str]] = {}
    provisioning: dict[str, list[str]] = {}
    unknown: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        target = provisioning if path.name in PROVISION_MODULES else runtime
        for found in _scan(path, models):
            if isinstance(found, str):
                unknown.append(found)
            else:
                target.setdefault(found.action, []).append(found.where)
    return runtime, provisioning, unknown


def _policy(path: Path) -> dict[str, set[str]]:
    """Action -> every resource the policy grants it on."""
    doc = json.loads(path.read_text())
    assert doc["Version"] == "2012-10-17"
    granted: dict[str, set[str]] = {}
    for statement in doc["Statement"]:
        assert statement["Effect"] == "Allow"
        assert "NotAction" not in statement and "NotResource" not in statement
        resources = statement["Resource"]
        resources = [resources] if isinstance(resources, str) else resources
        for action in statement["Action"]:
            assert "*" not in action, f"wildcard action {action}"
            granted.setdefault(action, set()).update(resources)
    return granted


def test_the_scanner_sees_the_calls_we_know_of() -> None:
    # Guards the scanner itself: if these vanish, it has stopped seeing calls.
    runtime, provisioning, _ = _calls()
    for action in ("sqs:ReceiveMessage", "sqs:SendMessage", "dynamodb:UpdateItem", "s3:PutObject"):
        assert action in runtime, action
    assert "sqs:CreateQueue" in provisioning
    assert "dynamodb:DescribeTable" in provisioning  # through the table_exists waiter


def test_the_scanner_reads_helpers_and_flags_unknown_clients(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "async def f(self, db, s3, client, request):\n"
        "    await self._call('x', self._sqs.purge_queue, QueueUrl='u')\n"
        "    async for page in db.get_paginator('query').paginate(TableName='t'):\n"
        "        pass\n"
        "    await s3.generate_presigned_url(ClientMethod='put_object', Params={})\n"
        "    await s3.head_object(Bucket='b', Key='k')\n"
        "    await client.put_item(TableName='t', Item={})\n"
        "    return request.query\n"
    )
    found = list(_scan(module, _models(), root=tmp_path))
    assert sorted(c.action for c in found if isinstance(c, Call)) == [
        "dynamodb:Query",
        "s3:GetObject",
        "s3:PutObject",
        "sqs:PurgeQueue",
    ]
    assert [u for u in found if isinstance(u, str)] == ["m.py:7: .put_item on 'client'"]


def test_every_client_call_is_recognised() -> None:
    _, _, unknown = _calls()
    # An operation on a receiver the scanner cannot place would escape the
    # policy check: name the client sqs/_sqs, db/_db/dynamodb or s3/_s3.
    assert unknown == []


def test_runtime_policy_grants_exactly_the_daemons_calls() -> None:
    runtime, _, _ = _calls()
    granted = set(_policy(RUNTIME_POLICY))
    missing = {a: runtime[a] for a in set(runtime) - granted}
    assert missing == {}, "the daemon makes calls its policy denies"
    assert granted - set(runtime) == set(), "the policy grants calls the daemon never makes"


def test_provisioning_policy_grants_exactly_inits_calls() -> None:
    _, provisioning, _ = _calls()
    granted = set(_policy(PROVISION_POLICY))
    missing = {a: provisioning[a] for a in set(provisioning) - granted}
    assert missing == {}, "`init` makes calls its policy denies"
    assert granted - set(provisioning) == set(), "the policy grants calls `init` never makes"


@pytest.mark.parametrize("path", [RUNTIME_POLICY, PROVISION_POLICY], ids=["runtime", "provision"])
def test_policies_name_only_the_configured_resources(path: Path) -> None:
    s = Settings()
    queues = {s.queue_name(r) for r in RESOURCES} | {s.dlq_name(r) for r in RESOURCES}
    bucket = s.results.bucket
    allowed = (
        {f"arn:aws:sqs:*:*:{q}" for q in queues}
        | {f"arn:aws:dynamodb:*:*:table/{s.store.table}"}
        | {f"arn:aws:dynamodb:*:*:table/{s.store.table}/index/{s.store.status_index}"}
        | {f"arn:aws:s3:::{bucket}"}
        | {f"arn:aws:s3:::{bucket}/{s.results.prefix}/*"}
        | {f"arn:aws:s3:::{bucket}/{s.results.input_prefix}/*"}
        # Where the studio keeps source images that jobs name as s3:// inputs.
        | {"arn:aws:s3:::shortdrama-inputs/*"}
    )
    for action, resources in _policy(path).items():
        assert resources <= allowed, f"{action}: {resources - allowed}"
        service = action.split(":")[0]
        assert all(r.startswith(f"arn:aws:{service}:") for r in resources), action


def test_consuming_is_limited_to_the_main_queues() -> None:
    # Only the DLQ's owner (a human) reads dead letters; the daemon only adds them.
    granted = _policy(RUNTIME_POLICY)
    s = Settings()
    main = {f"arn:aws:sqs:*:*:{s.queue_name(r)}" for r in RESOURCES}
    for action in ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"):
        assert granted[action] == main, action
    # Object writes stay under the two prefixes the daemon writes to.
    assert granted["s3:PutObject"] == {
        f"arn:aws:s3:::{s.results.bucket}/{s.results.prefix}/*",
        f"arn:aws:s3:::{s.results.bucket}/{s.results.input_prefix}/*",
    }


def _plugin_calls(package: Path) -> tuple[dict[str, list[str]], list[str]]:
    """(action -> places, unknown receivers) in a plugin's package."""
    _, services, receivers = PLUGINS[package]
    models = _models(services)
    calls: dict[str, list[str]] = {}
    unknown: list[str] = []
    for path in sorted(package.rglob("*.py")):
        for found in _scan(path, models, root=package, receivers=receivers):
            if isinstance(found, str):
                unknown.append(found)
            else:
                calls.setdefault(found.action, []).append(found.where)
    return calls, unknown


@pytest.mark.parametrize("package", sorted(PLUGINS), ids=lambda p: p.parent.name)
def test_a_plugins_policy_grants_exactly_its_calls(package: Path) -> None:
    policy, _, _ = PLUGINS[package]
    calls, unknown = _plugin_calls(package)
    assert unknown == []
    granted = set(_policy(policy))
    missing = {a: calls[a] for a in set(calls) - granted}
    assert missing == {}, "the plugin makes calls its policy denies"
    assert granted - set(calls) == set(), "the policy grants calls the plugin never makes"


def test_the_scanner_sees_the_compose_plugins_invocations() -> None:
    calls, _ = _plugin_calls(ROOT / "plugins" / "compose" / "shortdrama_compose")
    for action in ("sagemaker:InvokeEndpoint", "sagemaker:InvokeEndpointAsync", "s3:GetObject"):
        assert action in calls, action
