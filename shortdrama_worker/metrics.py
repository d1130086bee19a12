"""Every Prometheus metric the daemon exports, in one place.

The registry is injected so each application (and each test) has its own.
Labels stay bounded: ``kind``, ``resource``, ``outcome``, ``phase``,
``provider``, ``status_class``, ``queue``, ``operation``, ``server`` (a configured
ComfyUI server's name or index). Ids go to logs, never here.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from shortdrama_worker import __version__

# GPU jobs run for seconds to many minutes; CPU jobs for fractions of a second.
JOB_DURATION_BUCKETS = (
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    20,
    30,
    60,
    120,
    300,
    600,
    900,
    1200,
    1800,
)
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

LIMIT_NAMES = ("rate", "concurrency", "jobs_per_day", "cost_per_day")


class Metrics:
    """Holds the collectors; one instance per application."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.build_info = Info("shortdrama_build", "Version of the running daemon.", registry=r)
        self.build_info.info({"version": __version__})

        self.jobs_submitted = Counter(
            "shortdrama_jobs_submitted_total",
            "Jobs accepted by the API.",
            ["kind"],
            registry=r,
        )
        self.jobs_finished = Counter(
            "shortdrama_jobs_finished_total",
            "Job runs that ended, by outcome (completed, failed, retried, cancelled, returned).",
            ["kind", "outcome"],
            registry=r,
        )
        self.job_duration = Histogram(
            "shortdrama_job_duration_seconds",
            "Wall time of one job run in the handler.",
            ["kind", "outcome"],
            buckets=JOB_DURATION_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "shortdrama_queue_wait_seconds",
            "Time from SQS SentTimestamp to the start of the run.",
            ["kind"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "shortdrama_jobs_in_flight",
            "Jobs running in this process.",
            ["kind"],
            registry=r,
        )
        self.gpu_slots = Gauge(
            "shortdrama_gpu_slots", "GPU semaphore permits configured.", registry=r
        )
        self.gpu_slots_in_use = Gauge(
            "shortdrama_gpu_slots_in_use", "GPU semaphore permits held now.", registry=r
        )
        self.gpu_wait = Histogram(
            "shortdrama_gpu_wait_seconds",
            "Time a job waited for a GPU slot.",
            ["kind"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.gpu_busy = Counter(
            "shortdrama_gpu_busy_seconds_total",
            "Seconds GPU slots were held, summed over slots.",
            registry=r,
        )
        self.phase_duration = Histogram(
            "shortdrama_job_phase_duration_seconds",
            "Time spent in one phase of a job "
            "(fetch, upload, queue, execute, download, sign, store).",
            ["kind", "phase"],
            buckets=JOB_DURATION_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "shortdrama_job_retries_total",
            "Job runs put back to pending for a later attempt.",
            ["kind"],
            registry=r,
        )
        self.heartbeats = Counter(
            "shortdrama_heartbeats_total",
            "Visibility and lease extensions for long jobs.",
            ["resource"],
            registry=r,
        )
        self.sqs_errors = Counter(
            "shortdrama_sqs_errors_total",
            "SQS calls that failed, by operation (receive, delete, send, visibility).",
            ["operation"],
            registry=r,
        )
        self.messages_received = Counter(
            "shortdrama_messages_received_total",
            "SQS messages received.",
            ["resource"],
            registry=r,
        )
        self.messages_dead_lettered = Counter(
            "shortdrama_messages_dead_lettered_total",
            "Messages moved to the DLQ by this process (malformed or out of attempts).",
            ["resource"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "shortdrama_queue_messages",
            "Messages visible in a queue (polled from SQS attributes).",
            ["queue"],
            registry=r,
        )
        self.queue_in_flight = Gauge(
            "shortdrama_queue_messages_in_flight",
            "Messages received by some consumer and not yet deleted (SQS attribute).",
            ["queue"],
            registry=r,
        )
        self.queue_consumed = Gauge(
            "shortdrama_queue_consumed",
            "1 for a queue this instance consumes, 0 for one it accepts jobs for but does not.",
            ["queue"],
            registry=r,
        )
        self.provider_requests = Histogram(
            "shortdrama_provider_request_duration_seconds",
            "Calls to external providers (ComfyUI, DashScope, ARK) by status class.",
            ["provider", "status_class"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.provider_errors = Counter(
            "shortdrama_provider_errors_total",
            "Failed provider calls by status class (4xx, 5xx, timeout, connection).",
            ["provider", "status_class"],
            registry=r,
        )
        self.provider_usage = Counter(
            "shortdrama_provider_usage_total",
            "Billable provider usage (tokens, images) by provider and unit.",
            ["provider", "unit"],
            registry=r,
        )
        # One ComfyUI per GPU: each server's state, load and trouble on its own.
        self.comfy_server_up = Gauge(
            "shortdrama_comfyui_server_up",
            "1 while the ComfyUI server answers, 0 while it is down.",
            ["server"],
            registry=r,
        )
        self.comfy_slots_in_use = Gauge(
            "shortdrama_comfyui_slots_in_use",
            "Prompts given to the ComfyUI server now: executing or queued ahead inside it "
            "(or one that ignored an interrupt).",
            ["server"],
            registry=r,
        )
        self.comfy_busy = Counter(
            "shortdrama_comfyui_busy_seconds",
            "Seconds the ComfyUI server executed our prompts (not time queued in it), "
            "added at release.",
            ["server"],
            registry=r,
        )
        self.comfy_missing = Gauge(
            "shortdrama_comfyui_missing_requirements",
            "Node types, model files and choices a kind's templates need that the server lacks.",
            ["server", "kind"],
            registry=r,
        )
        self.comfy_interrupts = Counter(
            "shortdrama_comfyui_interrupts",
            "Interrupts sent, by whether ComfyUI left the prompt in time (honoured, late, lost).",
            ["server", "outcome"],
            registry=r,
        )
        self.comfy_unhonoured = Gauge(
            "shortdrama_comfyui_unhonoured_interrupts",
            "Prompts running past interrupt_wait_s after an interrupt; their slot stays held.",
            ["server"],
            registry=r,
        )
        # Serving clients: refusals by limit, estimated cost and reuse by kind (never by key).
        self.submits_refused = Counter(
            "shortdrama_submits_refused_total",
            "Submits answered 429, by the limit that refused them.",
            ["limit"],
            registry=r,
        )
        self.job_cost = Counter(
            "shortdrama_job_cost_total",
            "Estimated cost of completed jobs, in the configured currency (costs.currency).",
            ["kind"],
            registry=r,
        )
        self.jobs_reused = Counter(
            "shortdrama_jobs_reused_total",
            "Jobs answered from an earlier identical job's result instead of running.",
            ["kind"],
            registry=r,
        )
        self.cost_saved = Counter(
            "shortdrama_job_cost_saved_total",
            "Estimated cost the reused jobs did not spend (the source job's cost).",
            ["kind"],
            registry=r,
        )
        self.http_requests = Histogram(
            "shortdrama_http_request_duration_seconds",
            "Job API requests by route and status class.",
            ["route", "status_class"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )

    def declare_kinds(self, kinds: Iterable[str], outcomes: Iterable[str]) -> None:
        """Create every kind × outcome series at zero.

        A counter that appears only at its first increment makes ``rate()``
        and ``increase()`` miss that first job after each restart.
        """
        for kind in kinds:
            self.jobs_submitted.labels(kind)
            self.retries.labels(kind)
            self.job_cost.labels(kind)
            self.jobs_reused.labels(kind)
            self.cost_saved.labels(kind)
            self.in_flight.labels(kind)
            for outcome in outcomes:
                self.jobs_finished.labels(kind, outcome)
        for limit in LIMIT_NAMES:
            self.submits_refused.labels(limit)

    # The ``PluginMetrics`` protocol of the contract: what a handler may record.

    def observe_phase(self, kind: str, phase: str, seconds: float) -> None:
        self.phase_duration.labels(kind=kind, phase=phase).observe(seconds)

    def observe_provider_call(
        self, provider: str, status_class: str, seconds: float, *, failed: bool
    ) -> None:
        self.provider_requests.labels(provider=provider, status_class=status_class).observe(seconds)
        if failed:
            self.provider_errors.labels(provider=provider, status_class=status_class).inc()

    def count_provider_usage(self, provider: str, unit: str, amount: float) -> None:
        if amount > 0:
            self.provider_usage.labels(provider=provider, unit=unit).inc(amount)
