"""Turn every vendor failure into one ProviderError with a kind, a code and a sentence.

Status first, body second: the status decides the class, the body refines it (Gemini's bad
key is a 400, OpenAI's empty wallet is a 429) and supplies the vendor's own words. Bodies are
never assumed to be JSON (Perplexity's 401 is an HTML page).

Codes are stable strings for telemetry and tests: auth, forbidden, unknown_model,
bad_request, rate_limited, quota, credits, server_error, overloaded, timeout, connect,
stream_cut, malformed, in_stream_error, content_filter.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

from .base import ErrorKind, ProviderError

if TYPE_CHECKING:
    from .base import Provider

FATAL = ErrorKind.FATAL
RETRYABLE = ErrorKind.RETRYABLE
RATE_LIMITED = ErrorKind.RATE_LIMITED

# Where a person adds money, per vendor; a 402 is useless without it.
_CREDITS_HINT = {
    "openrouter": "add credits at https://openrouter.ai/settings/credits",
    "anthropic": "add credits under Plans & Billing in the Anthropic console",
    "openai": "check the plan and billing at https://platform.openai.com/settings/organization/billing",
}


# --- Reading bodies -----------------------------------------------------------------------


@dataclass(slots=True)
class VendorBody:
    """The parts of an error body we act on, whatever the vendor's shape."""

    message: str = ""
    type: str = ""  # OpenAI/Anthropic/Perplexity `type`
    code: str = ""  # OpenAI `code`, OpenRouter numeric code as text
    status: str = ""  # Gemini's enum (RESOURCE_EXHAUSTED, ...)
    details: list[dict[str, Any]] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def read_error(payload: Any) -> VendorBody:
    """Read an already-parsed error payload: the whole body, or the `error` value of it."""
    if isinstance(payload, list) and payload:
        payload = payload[0]  # Gemini's non-SSE errors come wrapped in a list
    if isinstance(payload, str):
        return VendorBody(message=payload)
    if not isinstance(payload, dict):
        return VendorBody()
    err = payload.get("error", payload)
    if isinstance(err, str):
        return VendorBody(message=err, type=_text(payload.get("type")))
    if not isinstance(err, dict):
        return VendorBody(message=_text(err))
    details = err.get("details")
    metadata = err.get("metadata")
    return VendorBody(
        message=_text(err.get("message")),
        type=_text(err.get("type")),
        code=_text(err.get("code")),
        status=_text(err.get("status")),
        details=[d for d in details if isinstance(d, dict)] if isinstance(details, list) else [],
        metadata=metadata if isinstance(metadata, dict) else {},
    )


_TAG = re.compile(r"<[^>]+>")
_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.I | re.S)


def read_body(body: bytes) -> VendorBody:
    text = body.decode("utf-8", "replace").strip()
    if not text:
        return VendorBody()
    try:
        return read_error(json.loads(text))
    except ValueError:
        pass
    # An HTML error page (a proxy's, or Perplexity's 401): its title is the useful part.
    title = _TITLE.search(text)
    plain = title.group(1) if title else _TAG.sub(" ", text)
    return VendorBody(message=" ".join(plain.split())[:300])


# --- Retry hints --------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|h|m|s)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float | None:
    """Seconds in a protobuf Duration ("19s", "45.25s") or a Go duration ("6m0s", "84ms")."""
    text = text.strip()
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP-date (RFC 9110)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


_TRY_AGAIN = re.compile(r"try again in (\d+(?:\.\d+)?(?:ms|s|m))", re.I)


def retry_after_from(
    headers: Mapping[str, str], body: VendorBody, now: float | None = None
) -> float | None:
    """The most precise wait any part of the response gives, in seconds."""
    now = time.time() if now is None else now
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    seconds = parse_retry_after(headers.get("retry-after"), datetime.fromtimestamp(now, UTC))
    if seconds is not None:
        return seconds
    for detail in body.details:  # Gemini
        if detail.get("@type", "").endswith("google.rpc.RetryInfo"):
            delay = parse_duration(_text(detail.get("retryDelay")))
            if delay is not None:
                return delay
    limits = body.metadata.get("headers")  # OpenRouter
    if isinstance(limits, dict):
        reset = {k.lower(): v for k, v in limits.items()}.get("x-ratelimit-reset")
        try:
            return max(0.0, float(str(reset)) / 1000 - now)
        except (TypeError, ValueError):
            pass
    match = _TRY_AGAIN.search(body.message)  # OpenAI's text, the last resort
    if match:
        return parse_duration(match.group(1))
    return None


def _is_daily(body: VendorBody) -> bool:
    for detail in body.details:  # Gemini QuotaFailure
        if detail.get("@type", "").endswith("google.rpc.QuotaFailure"):
            for violation in detail.get("violations") or []:
                if "PerDay" in _text(violation.get("quotaId")):
                    return True
    # OpenRouter: "Rate limit exceeded: free-models-per-day. Add 10 credits ..."
    return "per-day" in body.message.lower()


# --- Classification -----------------------------------------------------------------------


def _key_env(provider: Provider) -> str:
    return f"{provider.id.upper()}_API_KEY"


def _says(body: VendorBody, *needles: str) -> bool:
    hay = " ".join((body.message, body.type, body.code, body.status)).lower()
    hay += " " + " ".join(_text(d.get("reason")) for d in body.details).lower()
    return any(n in hay for n in needles)


def _classify(status: int, body: VendorBody) -> tuple[ErrorKind, str]:
    if status == 429:
        if _says(body, "insufficient_quota"):
            return FATAL, "quota"  # OpenAI: billing, not pace; retrying cannot help
        return RATE_LIMITED, "rate_limited"
    if status == 401 or _says(body, "api_key_invalid"):
        return FATAL, "auth"
    if status == 402 or _says(body, "credit balance", "billing_error"):
        return FATAL, "credits"
    if status == 403:
        return FATAL, "forbidden"
    if status == 404 or (
        status == 400 and _says(body, "invalid_model", "invalid model", "not a valid model")
    ):
        return FATAL, "unknown_model"  # Perplexity and OpenRouter say so with a 400
    if status in (408, 504):
        return RETRYABLE, "timeout"
    if status in (503, 529) or (status >= 500 and _says(body, "overloaded", "unavailable")):
        return RETRYABLE, "overloaded"
    if status == 409 or status >= 500:
        return RETRYABLE, "server_error"
    return FATAL, "bad_request"


def _wait_phrase(retry_after: float | None) -> str:
    if retry_after is None:
        return "retry in a moment"
    return f"retry in {max(1, math.ceil(retry_after))} s"


def _message(provider: Provider, model: str, code: str, body: VendorBody, **facts: Any) -> str:
    name = provider.display_name
    vendor = body.message.rstrip(".") or "no reason given"
    if code == "auth":
        return f"{name} rejected the key: set {_key_env(provider)}."
    if code == "forbidden":
        return f"{name} refused access to {model} ({vendor}); check the key's permissions."
    if code == "unknown_model":
        return f"{name} has no model '{model}' (or the key cannot use it)."
    if code == "rate_limited":
        if facts.get("daily_quota"):
            return f"{name}'s daily quota for {model} is used up; use another model or wait for the reset."
        return f"{name} is rate-limiting {model}; {_wait_phrase(facts.get('retry_after'))}."
    if code == "quota":
        hint = _CREDITS_HINT.get(provider.id, "check the plan and billing")
        return f"{name} says the key's quota is used up: {hint}."
    if code == "credits":
        hint = _CREDITS_HINT.get(provider.id, "add credits to the account")
        return f"{name} has no credits left for {model}: {hint}."
    if code == "overloaded":
        return f"{name} is overloaded ({model}); {_wait_phrase(facts.get('retry_after'))}."
    if code == "server_error":
        return f"{name} had a server error with {model}; retrying may help."
    if code == "timeout":
        return f"{name} timed out answering with {model}; retrying may help."
    return f"{name} rejected the request for {model}: {vendor}."


def from_http(
    provider: Provider,
    model: str,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
) -> ProviderError:
    """Classify a non-2xx response. `headers` must look names up case-insensitively (httpx)."""
    parsed = read_body(body)
    kind, code = _classify(status, parsed)
    # The Stainless SDKs obey x-should-retry over the status; a rate limit stays one.
    should_retry = (headers.get("x-should-retry") or "").lower()
    if kind is RETRYABLE and should_retry == "false":
        kind = FATAL
    elif kind is FATAL and should_retry == "true" and code != "auth":
        kind = RETRYABLE
    retry_after = retry_after_from(headers, parsed, now) if kind is not FATAL else None
    daily = code == "rate_limited" and _is_daily(parsed)
    return ProviderError(
        kind,
        _message(provider, model, code, parsed, retry_after=retry_after, daily_quota=daily),
        provider=provider.id,
        model=model,
        status=status,
        code=code,
        retry_after=retry_after,
        daily_quota=daily,
        vendor_message=parsed.message,
    )


def from_stream(provider: Provider, model: str, payload: Any) -> ProviderError:
    """An error the vendor reported after HTTP 200: the reply is broken, usually transiently."""
    body = read_error(payload)
    name = provider.display_name
    if _says(body, "rate_limit", "resource_exhausted") or body.code == "429":
        kind, code = RATE_LIMITED, "rate_limited"
        message = f"{name} is rate-limiting {model}; retry in a moment."
    elif _says(body, "overloaded", "unavailable") or body.code in ("503", "529"):
        kind, code = RETRYABLE, "overloaded"
        message = f"{name} is overloaded ({model}); retry in a moment."
    else:
        kind, code = RETRYABLE, "in_stream_error"
        vendor = body.message.rstrip(".") or "no reason given"
        message = f"{name} failed mid-reply with {model} ({vendor}); retrying may help."
    return ProviderError(
        kind,
        message,
        provider=provider.id,
        model=model,
        code=code,
        vendor_message=body.message,
    )


def blocked(provider: Provider, model: str, reason: str) -> ProviderError:
    return ProviderError(
        FATAL,
        f"{provider.display_name} blocked the prompt for {model} ({reason}); rephrase it.",
        provider=provider.id,
        model=model,
        code="content_filter",
        vendor_message=reason,
    )


# --- Transport failures -------------------------------------------------------------------


def _retryable(
    provider: Provider, model: str, code: str, message: str, vendor: str = ""
) -> ProviderError:
    return ProviderError(
        RETRYABLE, message, provider=provider.id, model=model, code=code, vendor_message=vendor
    )


def timed_out(
    provider: Provider, model: str, seconds: float, *, connecting: bool = False
) -> ProviderError:
    name = provider.display_name
    if connecting:
        env = f"{provider.id.upper()}_BASE_URL"
        text = f"Could not connect to {name} within {seconds:g} s for {model}; check the network and {env}."
    else:
        text = f"{name} sent nothing for {seconds:g} s while answering with {model}; retrying may help."
    return _retryable(provider, model, "timeout", text)


def too_long(provider: Provider, model: str, seconds: float) -> ProviderError:
    return _retryable(
        provider,
        model,
        "timeout",
        f"{provider.display_name} was still answering with {model} after {seconds:g} s, so the reply was stopped.",
    )


def connect_failed(provider: Provider, model: str, exc: Exception) -> ProviderError:
    env = f"{provider.id.upper()}_BASE_URL"
    return _retryable(
        provider,
        model,
        "connect",
        f"Could not reach {provider.display_name} for {model}; check the network and {env}.",
        vendor=f"{type(exc).__name__}: {exc}",
    )


def stream_cut(provider: Provider, model: str) -> ProviderError:
    return _retryable(
        provider,
        model,
        "stream_cut",
        f"{provider.display_name} ended the reply from {model} before it was complete; retrying may help.",
    )


def malformed(provider: Provider, model: str, data: str) -> ProviderError:
    return _retryable(
        provider,
        model,
        "malformed",
        f"{provider.display_name} sent data that could not be read while answering with {model}; retrying may help.",
        vendor=data[:200],
    )
