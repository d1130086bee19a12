"""Configuration: defaults < TOML file < ``SHORTDRAMA_*`` environment variables.

Nested sections map to environment variables with a double underscore, e.g.
``SHORTDRAMA_AWS__ENDPOINT_URL`` or ``SHORTDRAMA_GPU__SLOTS``. Every setting is
documented in ``config/worker.example.toml``.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from shortdrama_worker.edge_settings import (
    CorsSettings,
    CostSettings,
    LimitsSettings,
    ReuseSettings,
)

Resource = Literal["gpu", "cpu"]
RESOURCES: tuple[Resource, ...] = ("gpu", "cpu")


class Section(BaseModel):
    """A settings section: a misspelt key is an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class AwsSettings(Section):
    region: str = "us-east-1"
    endpoint_url: str | None = Field(
        default=None, description="Any AWS-compatible endpoint; unset means real AWS."
    )
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=30.0, gt=0)
    max_pool_connections: int = Field(default=50, ge=1)


class QueueSettings(Section):
    gpu_queue: str = "gpu_tasks_queue"
    cpu_queue: str = "cpu_tasks_queue"
    dlq_suffix: str = "_dlq"
    visibility_timeout_s: int = Field(default=120, ge=5, le=43200)
    wait_time_s: int = Field(default=20, ge=0, le=20, description="Long-poll wait.")
    max_receive_count: int = Field(
        default=10,
        ge=1,
        description="SQS redrive safety net for messages that crash the worker itself.",
    )


class StoreSettings(Section):
    table: str = "task_store"
    status_index: str = "status-created_at-index"
    ttl_days: int = Field(default=30, ge=1)


class ResultSettings(Section):
    bucket: str = "shortdrama-results"
    prefix: str = "results"
    input_prefix: str = "inputs"
    cdn_domain: str | None = Field(
        default=None, description="CloudFront domain; unset means presigned S3 URLs."
    )
    presign_expiry_s: int = Field(default=86400, ge=60, le=604800)


class ApiSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    public_url: str | None = Field(
        default=None, description="Base URL clients use; defaults to http://host:port."
    )
    max_body_bytes: int = Field(default=25 * 1024 * 1024, ge=1024)
    max_wait_s: int = Field(
        default=60,
        ge=0,
        le=3600,
        description="Longest `Prefer: wait=N` honoured on submit and status (seconds).",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host[:port] values of the Host header that status URLs may be built "
        "from when public_url is unset; any other Host gets the bound address.",
    )
    job_id_secret: SecretStr | None = Field(
        default=None,
        description="Key for job ids derived from Idempotency-Key (HMAC); unset means one "
        "generated once and kept in the task table, shared by every instance.",
    )
    body_timeout_s: float = Field(
        default=30.0, gt=0, description="A request's body must arrive within this."
    )
    shutdown_timeout_s: float = Field(
        default=5.0,
        ge=0,
        description="After the drain, how long open requests may still finish.",
    )


def _default_in_flight() -> dict[Resource, int]:
    return {"gpu": 2, "cpu": 4}


def _default_prefetch() -> dict[Resource, int]:
    # A prefetched message waits here, invisible, while an idle machine
    # elsewhere could have run it. For GPU work (seconds to minutes a job, one
    # job at a time) that is the wrong trade. CPU kinds run several at once,
    # most of them briefly (face_mask ~0.1 s), and receiving them several at a
    # time is what keeps SQS calls per job low under load.
    return {"gpu": 0, "cpu": 4}


class ConsumerSettings(Section):
    enabled: bool = True
    consume: list[Resource] = Field(default_factory=lambda: list(RESOURCES))
    max_in_flight: dict[Resource, NonNegativeInt] = Field(
        default_factory=_default_in_flight,
        description="Jobs run at once per queue.",
    )
    prefetch: dict[Resource, NonNegativeInt] = Field(
        default_factory=_default_prefetch,
        description="Messages received ahead of free slots, per queue, so that SQS is asked "
        "for several at a time; they wait here, invisible to other instances.",
    )
    kind_concurrency: dict[str, int] = Field(
        default_factory=dict, description="Optional cap per kind, below max_in_flight."
    )
    max_attempts: int = Field(default=3, ge=1)
    backoff_base_s: float = Field(default=5.0, ge=0)
    backoff_max_s: float = Field(default=900.0, ge=0)
    heartbeat_interval_s: float = Field(
        default=0.0,
        ge=0,
        description="Visibility/lease renewal period; 0 means a third of the visibility timeout.",
    )
    cancel_poll_s: float = Field(default=2.0, gt=0)
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    progress_min_interval_s: float = Field(default=1.0, ge=0)
    progress_delay_s: float = Field(
        default=0.5,
        ge=0,
        description="Progress reported in an attempt's first N seconds is written once, at N s "
        "(the latest value); an attempt that ends sooner writes none, its completion says it all.",
    )
    reconcile_interval_s: float = Field(
        default=300.0, ge=0, description="How often to look for orphaned jobs; 0 turns it off."
    )
    stale_after_s: float = Field(
        default=1800.0,
        ge=60,
        description="A pending job untouched this long (or a lease expired this long ago) "
        "is re-queued: its message was lost.",
    )


class GpuSettings(Section):
    slots: int = Field(default=1, ge=1)


class InputSettings(Section):
    max_bytes: int = Field(default=30 * 1024 * 1024, ge=1024)
    timeout_s: float = Field(default=30.0, gt=0)
    max_pixels: int = Field(default=80_000_000, ge=1)
    max_pixels_in_flight: int = Field(
        default=100_000_000,
        ge=1,
        description="Decoded input pixels held at once across the process (jobs wait for "
        "room); an image larger than this is decoded alone.",
    )
    allow_http: bool = False
    max_redirects: int = Field(default=3, ge=0, le=10)
    allow_networks: list[str] = Field(
        default_factory=list,
        description="CIDRs that inputs and webhooks may reach although private or loopback.",
    )
    s3_buckets: list[str] = Field(
        default_factory=list,
        description="Buckets s3:// inputs may name, besides the results bucket.",
    )

    @field_validator("allow_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for network in value:
            ipaddress.ip_network(network, strict=False)  # raises ValueError naming it
        return value


class HandlerSettings(Section):
    allow: list[str] | None = Field(
        default=None, description="Kinds that may load; unset loads every installed handler."
    )
    options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Each handler's own section, by kind."
    )


class ApiKeySettings(Section):
    id: str = Field(min_length=1, max_length=64, description="Recorded as submitted_by.")
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$", description="SHA-256 hex digest of the key.")
    kinds: list[str] = Field(default_factory=lambda: ["*"], description="Kinds it may submit.")
    read_all: bool = Field(default=False, description="May read and cancel others' jobs.")


class AuthSettings(Section):
    enabled: bool = False
    keys: list[ApiKeySettings] = Field(default_factory=list)
    public_health: bool = True
    public_metrics: bool = True

    @model_validator(mode="after")
    def _keys_when_enabled(self) -> AuthSettings:
        if self.enabled and not self.keys:
            raise ValueError("auth.enabled needs at least one [[auth.keys]] entry")
        ids = [k.id for k in self.keys]
        if len(ids) != len(set(ids)):
            raise ValueError("auth.keys ids must be unique")
        return self


class WebhookSettings(Section):
    secret: SecretStr | None = Field(
        default=None,
        description="Signing secret (whsec_<base64> or any string); unset refuses callback_url.",
    )
    max_attempts: int = Field(default=5, ge=1, le=20)
    backoff_base_s: float = Field(default=2.0, ge=0)
    timeout_s: float = Field(default=10.0, gt=0)


class ProvenanceSettings(Section):
    """Content Credentials (C2PA) signed into every PNG, JPEG and WebP result."""

    enabled: bool = Field(
        default=True, description="Sign result images; off only for an operator who must."
    )
    certificate: Path | None = Field(
        default=None,
        description="PEM file: the signing certificate first, then its intermediates.",
    )
    private_key: Path | None = Field(
        default=None, description="PEM file: the signing certificate's private key (PKCS#8)."
    )
    timestamp_url: str | None = Field(
        default=None,
        pattern=r"^https?://",
        description="RFC 3161 time-stamp authority; lets manifests outlive the certificate.",
    )
    dev_certificate: bool = Field(
        default=False,
        description="Without certificate/private_key: make a development CA and signing "
        "certificate on first run, keep them in dev_certificate_dir and sign with them.",
    )
    dev_certificate_dir: Path | None = Field(
        default=None,
        description="Where the development certificate is kept; unset: "
        "$XDG_STATE_HOME/shortdrama-worker/dev-certificate (~/.local/state/…).",
    )

    @model_validator(mode="after")
    def _key_with_certificate(self) -> ProvenanceSettings:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("certificate and private_key are set together")
        return self


class LogSettings(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["auto", "json", "console"] = "auto"


class LocalSettings(Section):
    embedded_aws: bool = Field(
        default=False, description="Start an AWS-compatible endpoint (moto) in-process."
    )
    embedded_aws_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Port of the embedded endpoint; fixed so result URLs survive a restart "
        "(0: any free port).",
    )
    state_dir: Path | None = Field(
        default=None,
        description="Where the embedded endpoint keeps its tables and files across restarts "
        "(unset: in memory only).",
    )
    provision: bool = Field(default=False, description="Run `init` at start-up.")


class Settings(BaseSettings):
    """Everything the daemon reads at start-up."""

    model_config = SettingsConfigDict(
        env_prefix="SHORTDRAMA_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    instance_id: str | None = Field(
        default=None, description="Names this process in task records; defaults to host:pid."
    )
    aws: AwsSettings = Field(default_factory=AwsSettings)
    queues: QueueSettings = Field(default_factory=QueueSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    results: ResultSettings = Field(default_factory=ResultSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    consumer: ConsumerSettings = Field(default_factory=ConsumerSettings)
    gpu: GpuSettings = Field(default_factory=GpuSettings)
    inputs: InputSettings = Field(default_factory=InputSettings)
    handlers: HandlerSettings = Field(default_factory=HandlerSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    provenance: ProvenanceSettings = Field(default_factory=ProvenanceSettings)
    local: LocalSettings = Field(default_factory=LocalSettings)
    cors: CorsSettings = Field(default_factory=CorsSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    costs: CostSettings = Field(default_factory=CostSettings)
    reuse: ReuseSettings = Field(default_factory=ReuseSettings)

    @model_validator(mode="after")
    def _check_timing(self) -> Settings:
        interval = self.heartbeat_interval_s
        if interval >= self.queues.visibility_timeout_s:
            raise ValueError(
                "consumer.heartbeat_interval_s must be shorter than "
                "queues.visibility_timeout_s, or messages reappear while their job runs"
            )
        return self

    @property
    def heartbeat_interval_s(self) -> float:
        return self.consumer.heartbeat_interval_s or self.queues.visibility_timeout_s / 3

    def queue_name(self, resource: Resource) -> str:
        return self.queues.gpu_queue if resource == "gpu" else self.queues.cpu_queue

    def dlq_name(self, resource: Resource) -> str:
        return self.queue_name(resource) + self.queues.dlq_suffix

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Earlier sources win: explicit arguments, then env, then the TOML file.
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, deep_merge=True),
        )


class ConfigError(Exception):
    """A setting is wrong; the message names it."""


def load_settings(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Read settings from ``path`` (or ``$SHORTDRAMA_CONFIG``) and the environment.

    Raises ``ConfigError`` with every bad setting named, so start-up stops with
    a message an operator can act on.
    """
    config_path = path if path is not None else os.environ.get("SHORTDRAMA_CONFIG")
    toml_file: Path | None = None
    if config_path:
        toml_file = Path(config_path)
        if not toml_file.is_file():
            raise ConfigError(f"config file not found: {toml_file}")
    # The TOML path differs per call, so it goes into a per-call subclass
    # rather than into any module-level state.
    bound = type(
        "Settings",
        (Settings,),
        {"model_config": {**Settings.model_config, "toml_file": toml_file}},
    )
    try:
        settings: Settings = bound(**overrides)
        return settings
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            f" ({_source_of(err['loc'], toml_file, overrides)})"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None
    except Exception as exc:  # a TOML syntax error names the line
        raise ConfigError(f"cannot read configuration {toml_file}: {exc}") from None


def _source_of(loc: tuple[Any, ...], toml_file: Path | None, overrides: dict[str, Any]) -> str:
    """Which source set the bad value: an environment variable wins over the file."""
    names = [str(p) for p in loc if not isinstance(p, int)]
    # The deepest variable that is set: SHORTDRAMA_API__PORT, or a whole
    # section given as JSON (SHORTDRAMA_API='{"port": …}').
    for depth in range(len(names), 0, -1):
        var = "SHORTDRAMA_" + "__".join(names[:depth]).upper()
        if var in {k.upper() for k in os.environ}:
            return f"environment variable {var}"
    if names and names[0] in overrides:
        return "given by the caller"
    return f"file {toml_file}" if toml_file else "default"
