"""Settings for serving clients at the edge: CORS, per-key limits, costs, result reuse.

Kept out of ``settings.py`` so these sections can change without touching the
daemon's core configuration; ``Settings`` holds one field for each.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, field_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CorsSettings(_Section):
    """``[cors]``: which browser origins may call the API. Nothing is allowed by default."""

    allow_origins: list[str] = Field(
        default_factory=list,
        description='Origins allowed to call the API ("https://app.example.com"); "*" allows '
        "any. Empty: no cross-origin access.",
    )
    allow_methods: list[str] = Field(default_factory=lambda: ["GET", "POST", "DELETE"])
    allow_headers: list[str] = Field(
        default_factory=lambda: [
            "Authorization",
            "Content-Type",
            "Idempotency-Key",
            "Prefer",
            "X-Request-Id",
        ]
    )
    expose_headers: list[str] = Field(
        default_factory=lambda: [
            "Location",
            "Idempotent-Replayed",
            "Retry-After",
            "Preference-Applied",
            "X-Request-Id",
        ],
        description="Response headers a browser script may read.",
    )
    allow_credentials: bool = Field(
        default=False,
        description="Allow cookies/TLS client certificates; not needed for Bearer keys.",
    )
    max_age_s: int = Field(default=600, ge=0, le=86400, description="How long a preflight holds.")

    @field_validator("allow_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin == "*":
                continue
            parts = urlsplit(origin)
            if parts.scheme not in ("https", "http") or not parts.hostname or parts.path:
                raise ValueError(f"{origin!r} is not an origin like https://app.example.com")
        return [o.rstrip("/").lower() for o in value]

    @field_validator("allow_methods")
    @classmethod
    def _methods(cls, value: list[str]) -> list[str]:
        return [m.upper() for m in value]


class LimitSettings(_Section):
    """Limits of one API key (or of anonymous use); unset means unlimited."""

    rate: int | None = Field(default=None, ge=1, description="Submits per rate_window_s.")
    rate_window_s: int = Field(default=60, ge=1, le=86400)
    concurrency: int | None = Field(
        default=None, ge=1, le=1000, description="Unfinished (pending or running) jobs at once."
    )
    jobs_per_day: int | None = Field(default=None, ge=1, description="Jobs per UTC day.")
    cost_per_day: NonNegativeFloat | None = Field(
        default=None, description="Estimated spend per UTC day, in costs.currency."
    )


class LimitsSettings(_Section):
    """``[limits]``: per-key limits, checked at submit, shared by every instance."""

    default: LimitSettings = Field(
        default_factory=LimitSettings, description="For every key without its own entry."
    )
    anonymous: LimitSettings | None = Field(
        default=None, description="For requests without a key (auth off); unset: the default."
    )
    keys: dict[str, LimitSettings] = Field(
        default_factory=dict,
        description="By API key id; a field left unset there falls back to the default.",
    )

    def for_principal(self, key_id: str | None) -> LimitSettings:
        """The limits that apply to ``key_id`` (``None``: anonymous)."""
        own = self.anonymous if key_id is None else self.keys.get(key_id)
        if own is None:
            return self.default
        merged = self.default.model_dump()
        merged.update(own.model_dump(exclude_unset=True))
        return LimitSettings.model_validate(merged)


class CostSettings(_Section):
    """``[costs]``: prices that turn reported usage into an estimated cost per job."""

    currency: str = Field(default="USD", min_length=1, max_length=8)
    prices: dict[str, dict[str, NonNegativeFloat]] = Field(
        default_factory=dict,
        description='Price per unit, by "provider" or "provider/model" (the more specific '
        "wins), e.g. prices.ark = {generated_images = 0.03}; prices.gpu = {seconds = …} "
        "prices GPU time the worker measured.",
    )


class ReuseSettings(_Section):
    """``[reuse]``: answering a repeated request with an earlier result."""

    enabled: bool = Field(default=True, description="Off: every job runs.")
    max_age_s: int = Field(
        default=86400, ge=0, description="Only results younger than this are reused."
    )
    share_across_keys: bool = Field(
        default=False, description="Reuse results of other API keys' jobs too."
    )
