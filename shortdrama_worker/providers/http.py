"""How every paid-provider call is made: rate limit, retry, classify, measure.

DashScope and ARK bill per call, throttle per account and moderate content.
The rules here keep a busy worker from turning one provider hiccup into a bill
or a ban:

- A client-side limiter spaces requests (requests per minute, small burst), so
  a burst of jobs waits here instead of tripping the provider's 429s.
- Only 408/429/5xx, timeouts and connection errors are retried, with
  exponential backoff; a ``Retry-After`` is obeyed and also pauses the limiter,
  so every other queued call waits it out too. A ``Retry-After`` longer than
  ``max_retry_after_s`` is handed to the runner as a ``TransientJobError`` so
  the job goes back to the queue instead of holding a worker slot.
- Moderation refusals and 401/403 fail at once as ``PermanentJobError`` with a
  message an editor can act on: the same input or key will fail again.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from structlog.typing import FilteringBoundLogger

from shortdrama_worker.contract.context import PluginMetrics
from shortdrama_worker.contract.errors import JobError, PermanentJobError, TransientJobError

# Codes that a provider sends with 429 but that waiting cannot fix: a spending
# cap set by the account owner, an exhausted quota or trial.
_QUOTA_CODES = frozenset(
    {"SetLimitExceeded", "QuotaExceeded", "insufficient_quota", "Arrearage", "AccountOverdue"}
)
_MODERATION_CODES = frozenset({"data_inspection_failed", "DataInspectionFailed"})
_RETRYABLE_STATUS = frozenset({408, 409, 429})


class ProviderSettings(BaseModel):
    """Connection and call discipline for one provider; each provider sets its own defaults."""

    model_config = ConfigDict(extra="forbid")

    api_key: SecretStr | None = Field(
        default=None, description="Bearer API key; unset leaves the provider unusable (degraded)."
    )
    base_url: str = Field(description="API base URL, without a trailing slash.")
    timeout_s: float = Field(default=60.0, gt=0, le=900, description="Limit for one HTTP call.")
    requests_per_minute: float = Field(
        default=60.0,
        ge=0,
        description="Client-side limit for this handler's calls; 0 disables it.",
    )
    burst: int = Field(default=1, ge=1, le=100, description="Calls allowed back to back.")
    max_attempts: int = Field(default=3, ge=1, le=10, description="Tries per call, first included.")
    backoff_base_s: float = Field(default=0.5, ge=0, description="First retry delay; doubles.")
    backoff_max_s: float = Field(default=8.0, ge=0)
    max_retry_after_s: float = Field(
        default=30.0,
        ge=0,
        description="Longer Retry-After values return the job to the queue instead of waiting.",
    )


class RateLimiter:
    """A token bucket that makes callers wait their turn, first come first served.

    ``acquire`` holds a lock while it sleeps, so queued callers leave in the
    order they arrived and the provider sees an even stream, never a spike.
    """

    def __init__(
        self,
        requests_per_minute: float,
        burst: int = 1,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = requests_per_minute / 60.0
        self.capacity = float(max(1, burst))
        self._clock = clock
        self._tokens = self.capacity
        self._updated = clock()
        self._not_before = 0.0
        self._lock = asyncio.Lock()

    def pause(self, seconds: float) -> None:
        """Hold every caller back for ``seconds`` (the provider asked us to)."""
        self._not_before = max(self._not_before, self._clock() + seconds)

    async def acquire(self) -> float:
        """Wait for a slot; return how long the caller waited."""
        start = self._clock()
        async with self._lock:
            while True:
                now = self._clock()
                if now < self._not_before:
                    await asyncio.sleep(self._not_before - now)
                    continue
                if self.rate <= 0:
                    break
                self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
                self._updated = now
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    break
                await asyncio.sleep((1.0 - self._tokens) / self.rate)
        return self._clock() - start


@dataclass(frozen=True)
class ProviderResponse:
    """A finished HTTP exchange that was not retried further."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def error_of(body: bytes) -> tuple[str | None, str | None]:
    """``(code, message)`` from an error body in either provider's shape.

    OpenAI-compatible and ARK bodies nest it under ``error``; DashScope's
    native API puts ``code``/``message`` at the top level.
    """
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None, None
    if not isinstance(doc, dict):
        return None, None
    err = doc.get("error")
    if isinstance(err, dict):
        doc = err
    elif isinstance(err, str):
        return None, err
    code = doc.get("code")
    message = doc.get("message")
    return (
        str(code) if code not in (None, "") else None,
        str(message) if message not in (None, "") else None,
    )


def is_moderation_code(code: str | None) -> bool:
    """Whether ``code`` means the provider's content filter refused the request."""
    if code is None:
        return False
    return (
        code in _MODERATION_CODES or "SensitiveContentDetected" in code or "RiskDetection" in code
    )


def status_class(status: int) -> str:
    return f"{status // 100}xx"


class ProviderClient:
    """HTTP calls to one provider with the shared discipline.

    One instance per handler and provider; it holds the limiter, so every job
    of that handler shares one request budget. ``auth_failed`` remembers a
    401/403 until the next success, for ``health()``.
    """

    def __init__(
        self,
        name: str,
        display_name: str,
        settings: ProviderSettings,
        *,
        http: aiohttp.ClientSession,
        metrics: PluginMetrics | None,
        log: FilteringBoundLogger,
        config_hint: str,
    ) -> None:
        self.name = name
        self.display_name = display_name
        self.settings = settings
        self.limiter = RateLimiter(settings.requests_per_minute, settings.burst)
        self.auth_failed = False
        self._http = http
        self._metrics = metrics
        self._log = log
        # Where an operator sets the key, named in the "not configured" error.
        self._config_hint = config_hint

    @property
    def configured(self) -> bool:
        key = self.settings.api_key
        return key is not None and bool(key.get_secret_value())

    @property
    def healthy(self) -> bool:
        return self.configured and not self.auth_failed

    def url(self, path: str) -> str:
        return self.settings.base_url.rstrip("/") + "/" + path.lstrip("/")

    def record_usage(self, unit: str, amount: float) -> None:
        """Count billable usage (tokens, images) on the provider usage counter."""
        if self._metrics is not None:
            self._metrics.count_provider_usage(self.name, unit, amount)

    async def post_json(
        self, path: str, body: Mapping[str, Any], *, log: FilteringBoundLogger | None = None
    ) -> dict[str, Any]:
        """POST ``body`` to the API and return the decoded JSON answer.

        Raises ``PermanentJobError`` for refusals that repeat (moderation,
        auth, bad request) and ``TransientJobError`` when retries ran out.
        """
        key = self.settings.api_key
        if key is None or not key.get_secret_value():
            raise PermanentJobError(
                f"{self.display_name} is not configured on this worker: no API key "
                f"(set {self._config_hint}). The job was not sent.",
                code="provider_not_configured",
            )
        headers = {
            "Authorization": f"Bearer {key.get_secret_value()}",
            "Content-Type": "application/json",
        }
        resp = await self.send(
            "POST", self.url(path), json_body=body, headers=headers, limited=True, log=log
        )
        if resp.status >= 400:
            raise self.classify(resp.status, resp.body)
        self.auth_failed = False
        try:
            doc = resp.json()
        except (ValueError, UnicodeDecodeError):
            raise TransientJobError(
                f"{self.display_name} answered HTTP {resp.status} with a body that is not JSON",
                code="provider_bad_response",
            ) from None
        if not isinstance(doc, dict):
            raise TransientJobError(
                f"{self.display_name} answered with unexpected JSON", code="provider_bad_response"
            )
        # ARK may report a failure inside a 200 body.
        if isinstance(doc.get("error"), dict) and doc["error"]:
            raise self.classify(resp.status, resp.body)
        return doc

    async def send(
        self,
        method: str,
        url: str,
        *,
        json_body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        limited: bool = True,
        log: FilteringBoundLogger | None = None,
    ) -> ProviderResponse:
        """One logical call: retried on 408/409/429/5xx, timeouts and connection errors.

        Returns the first response that is a success or not worth retrying;
        raises ``TransientJobError`` when the attempts run out.
        """
        log = log or self._log
        s = self.settings
        timeout = aiohttp.ClientTimeout(total=s.timeout_s)
        attempt = 0
        while True:
            attempt += 1
            if limited:
                await self.limiter.acquire()
            resp_opt, reason, retry_after = await self._attempt(
                method, url, json_body=json_body, headers=headers, timeout=timeout
            )

            if resp_opt is not None and not self._retryable(resp_opt):
                return resp_opt
            if retry_after is not None:
                # Everyone calling this provider waits, not just this job.
                self.limiter.pause(retry_after)
                if retry_after > s.max_retry_after_s:
                    raise TransientJobError(
                        f"{self.display_name} is throttling ({reason}); it asked to wait "
                        f"{retry_after:g} s, so the job goes back to the queue",
                        code="provider_throttled",
                        retry_after=retry_after,
                    )
            if attempt >= s.max_attempts:
                raise TransientJobError(
                    f"{self.display_name} unavailable after {attempt} attempts: {reason}",
                    code="provider_throttled"
                    if resp_opt is not None and resp_opt.status == 429
                    else "provider_unavailable",
                    retry_after=retry_after,
                )
            delay = self._backoff(attempt) if retry_after is None else retry_after
            log.warning(
                "provider_retry",
                provider=self.name,
                attempt=attempt,
                reason=reason,
                delay_s=round(delay, 3),
            )
            await asyncio.sleep(delay)

    async def _attempt(
        self,
        method: str,
        url: str,
        *,
        json_body: Mapping[str, Any] | None,
        headers: Mapping[str, str] | None,
        timeout: aiohttp.ClientTimeout,
    ) -> tuple[ProviderResponse | None, str, float | None]:
        """One request: its response (``None`` if none came), why it failed, Retry-After."""
        started = time.monotonic()
        retry_after: float | None = None
        resp: ProviderResponse | None = None
        try:
            async with self._http.request(
                method, url, json=json_body, headers=headers, timeout=timeout
            ) as r:
                resp = ProviderResponse(r.status, dict(r.headers), await r.read())
        except TimeoutError:
            outcome, reason = "timeout", f"no answer within {self.settings.timeout_s:g} s"
        except aiohttp.ClientError as exc:
            outcome, reason = "connection", f"connection failed ({exc})"
        else:
            outcome = status_class(resp.status)
            code, _ = error_of(resp.body)
            reason = f"HTTP {resp.status}" + (f" {code}" if code else "")
            retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        self._observe(outcome, time.monotonic() - started)
        return resp, reason, retry_after

    def _retryable(self, resp: ProviderResponse) -> bool:
        if resp.status < 400:
            return False
        if resp.status in _RETRYABLE_STATUS or resp.status >= 500:
            code, _ = error_of(resp.body)
            return code not in _QUOTA_CODES
        return False

    def _backoff(self, attempt: int) -> float:
        s = self.settings
        ceiling = min(s.backoff_max_s, s.backoff_base_s * 2 ** (attempt - 1))
        # Jitter spreads out workers that failed together.
        return float(ceiling * random.uniform(0.5, 1.0))

    def _observe(self, outcome: str, seconds: float) -> None:
        if self._metrics is None:
            return
        self._metrics.observe_provider_call(
            self.name, outcome, seconds, failed=outcome not in ("2xx", "3xx")
        )

    def classify(self, status: int, body: bytes) -> JobError:
        """Turn a failed answer into the error the runner and the editor see."""
        code, message = error_of(body)
        detail = f"{code}: {message}" if code and message else (code or message or "no detail")
        who = self.display_name
        if is_moderation_code(code):
            return PermanentJobError(
                f"{who} refused the content: its moderation flagged the input or the result "
                f"({detail}). Retrying the same images will not help; use different images.",
                code="content_refused",
            )
        if status in (401, 403):
            self.auth_failed = True
            self._log.error("provider_auth_failed", provider=self.name, status=status, code=code)
            return PermanentJobError(
                f"{who} rejected this worker's credentials (HTTP {status}, {detail}). "
                "An operator must fix the API key or its permissions; the job was not retried.",
                code="provider_auth",
            )
        if code in _QUOTA_CODES:
            return PermanentJobError(
                f"{who} refused the call because the account's quota or spending limit is "
                f"reached ({detail}). An operator must raise it.",
                code="provider_quota",
            )
        if status == 413:
            return PermanentJobError(
                f"{who} rejected the request as too large ({detail}); use a smaller image.",
                code="input_too_large",
            )
        if status == 404:
            return PermanentJobError(
                f"{who} does not know the configured model or endpoint ({detail}); "
                "an operator must check the model name and that it is activated.",
                code="provider_model_not_found",
            )
        if 400 <= status < 500:
            return PermanentJobError(
                f"{who} rejected the request (HTTP {status}, {detail}).", code="provider_rejected"
            )
        return TransientJobError(
            f"{who} failed (HTTP {status}, {detail}).", code="provider_unavailable"
        )
