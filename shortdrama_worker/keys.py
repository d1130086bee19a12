"""Typed application keys: the only way shared objects are reached."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from shortdrama_worker.aws.clients import AwsClients
from shortdrama_worker.aws.queue import JobQueue
from shortdrama_worker.aws.results import ResultStore
from shortdrama_worker.aws.store import TaskStore
from shortdrama_worker.inputs.fetch import InputRules
from shortdrama_worker.inputs.netguard import AddressPolicy
from shortdrama_worker.jobs.consumer import Consumer
from shortdrama_worker.jobs.depth import QueueDepthExporter
from shortdrama_worker.jobs.gates import Gates
from shortdrama_worker.jobs.limits import Limits
from shortdrama_worker.jobs.reconcile import Reconciler
from shortdrama_worker.jobs.runner import JobRunner
from shortdrama_worker.jobs.submission import Submitter
from shortdrama_worker.jobs.watch import JobWatch
from shortdrama_worker.jobs.webhooks import WebhookSender
from shortdrama_worker.metrics import Metrics
from shortdrama_worker.plugins import AnyHandler, HandlerRegistry, Readiness
from shortdrama_worker.provenance import ContentCredentials
from shortdrama_worker.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
REGISTRY = web.AppKey("registry", HandlerRegistry)
HANDLERS = web.AppKey("handlers", dict[str, AnyHandler])
HTTP = web.AppKey("http", aiohttp.ClientSession)
UNTRUSTED_HTTP = web.AppKey("untrusted_http", aiohttp.ClientSession)
ADDRESS_POLICY = web.AppKey("address_policy", AddressPolicy)
INPUT_RULES = web.AppKey("input_rules", InputRules)
# Key of the HMAC that turns an Idempotency-Key into a job id.
JOB_ID_SECRET = web.AppKey("job_id_secret", bytes)
SUBMITTER = web.AppKey("submitter", Submitter)
ENDPOINT_URL = web.AppKey("endpoint_url", str)
AWS = web.AppKey("aws", AwsClients)
STORE = web.AppKey("store", TaskStore)
QUEUE = web.AppKey("queue", JobQueue)
RESULTS = web.AppKey("results", ResultStore)
RUNNER = web.AppKey("runner", JobRunner)
WEBHOOKS = web.AppKey("webhooks", WebhookSender)
CONSUMER = web.AppKey[Consumer | None]("consumer")
GATES = web.AppKey("gates", Gates)
READINESS = web.AppKey("readiness", Readiness)
RECONCILER = web.AppKey("reconciler", Reconciler)
DEPTH = web.AppKey("queue_depth", QueueDepthExporter)
WATCH = web.AppKey("watch", JobWatch)
LIMITS = web.AppKey("limits", Limits)
# Jobs restored from the embedded endpoint's state directory wait to be queued again.
RESTORED = web.AppKey("restored", bool)
CONTENT_CREDENTIALS = web.AppKey[ContentCredentials | None]("content_credentials")
