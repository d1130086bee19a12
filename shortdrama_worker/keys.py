"""Typed application keys: the only way shared objects are reached."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from shortdrama_worker.aws import AwsClients
from shortdrama_worker.consumer import Consumer
from shortdrama_worker.depth import QueueDepthExporter
from shortdrama_worker.gates import Gates
from shortdrama_worker.inputs import InputRules
from shortdrama_worker.limits import Limits
from shortdrama_worker.metrics import Metrics
from shortdrama_worker.netguard import AddressPolicy
from shortdrama_worker.plugins import AnyHandler, HandlerRegistry, Readiness
from shortdrama_worker.provenance import ContentCredentials
from shortdrama_worker.queue import JobQueue
from shortdrama_worker.reconcile import Reconciler
from shortdrama_worker.results import ResultStore
from shortdrama_worker.runner import JobRunner
from shortdrama_worker.settings import Settings
from shortdrama_worker.store import TaskStore
from shortdrama_worker.submission import Submitter
from shortdrama_worker.watch import JobWatch
from shortdrama_worker.webhooks import WebhookSender

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
