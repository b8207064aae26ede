from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx

from providers import errors
from providers.anthropic import AnthropicProvider
from providers.base import ErrorKind, ProviderConfig
from providers.gemini import GeminiProvider
from providers.openai import OpenAIProvider
from providers.openrouter import OpenRouterProvider
from providers.perplexity import PerplexityProvider

NOW = 1_800_000_000.0
OPENAI = OpenAIProvider(ProviderConfig())


def _error(provider, status, body, headers=None, model="gpt-4o-mini"):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return errors.from_http(provider, model, status, httpx.Headers(headers or {}), raw, now=NOW)


def test_retry_after_reads_seconds():
    assert errors.parse_retry_after("4") == 4.0
    assert errors.parse_retry_after("1.5") == 1.5


def test_retry_after_reads_an_http_date():
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert errors.parse_retry_after("Thu, 01 Jan 2026 12:00:30 GMT", now) == 30.0
    assert errors.parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now) == 0.0


def test_retry_after_ignores_garbage():
    assert errors.parse_retry_after("soon") is None
    assert errors.parse_retry_after(None) is None


def test_durations_in_protobuf_and_go_forms():
    assert errors.parse_duration("19s") == 19.0
    assert errors.parse_duration("45.25s") == 45.25
    assert errors.parse_duration("84ms") == 0.084
    assert errors.parse_duration("6m0s") == 360.0
    assert errors.parse_duration("later") is None


def test_retry_after_ms_wins_over_retry_after():
    exc = _error(
        OPENAI, 429, {"error": {"message": "slow"}}, {"retry-after-ms": "250", "retry-after": "9"}
    )
    assert exc.retry_after == 0.25


def test_openai_rate_limit_falls_back_to_the_message_text():
    body = {
        "error": {
            "message": "Rate limit reached. Please try again in 84ms. Visit ...",
            "type": "tokens",
            "code": "rate_limit_exceeded",
        }
    }
    exc = _error(OPENAI, 429, body)
    assert exc.kind is ErrorKind.RATE_LIMITED
    assert exc.code == "rate_limited"
    assert exc.retry_after == 0.084
    assert exc.message == "OpenAI is rate-limiting gpt-4o-mini; retry in 1 s."
    assert exc.vendor_message.startswith("Rate limit reached.")


def test_openai_retry_after_header_is_in_the_message():
    exc = _error(OPENAI, 429, {"error": {"message": "slow down"}}, {"Retry-After": "4"})
    assert exc.retry_after == 4.0
    assert exc.message == "OpenAI is rate-limiting gpt-4o-mini; retry in 4 s."


def test_openai_insufficient_quota_is_fatal():
    body = {
        "error": {
            "message": "You exceeded your current quota",
            "type": "insufficient_quota",
            "code": "insufficient_quota",
        }
    }
    exc = _error(OPENAI, 429, body)
    assert exc.kind is ErrorKind.FATAL
    assert exc.code == "quota"
    assert exc.retry_after is None


def test_gemini_retry_info_and_daily_quota():
    provider = GeminiProvider(ProviderConfig())
    details = [
        {
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [{"quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}],
        },
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "45.25s"},
    ]
    exc = _error(
        provider,
        429,
        {
            "error": {
                "code": 429,
                "message": "quota",
                "status": "RESOURCE_EXHAUSTED",
                "details": details,
            }
        },
        model="gemini-2.5-flash",
    )
    assert exc.kind is ErrorKind.RATE_LIMITED
    assert exc.retry_after == 45.25
    assert exc.daily_quota is True
    assert "daily quota for gemini-2.5-flash" in exc.message


def test_gemini_bad_key_is_a_400_with_a_reason():
    provider = GeminiProvider(ProviderConfig())
    body = {
        "error": {
            "code": 400,
            "message": "API key not valid.",
            "status": "INVALID_ARGUMENT",
            "details": [{"reason": "API_KEY_INVALID"}],
        }
    }
    exc = _error(provider, 400, body)
    assert exc.code == "auth"
    assert exc.message == "Gemini rejected the key: set GEMINI_API_KEY."


def test_openrouter_reset_header_in_the_body_is_epoch_ms():
    provider = OpenRouterProvider(ProviderConfig())
    reset = int((NOW + 30) * 1000)
    body = {
        "error": {
            "code": 429,
            "message": "Rate limit exceeded",
            "metadata": {"headers": {"X-RateLimit-Reset": str(reset)}},
        }
    }
    exc = _error(provider, 429, body)
    assert exc.retry_after == 30.0


def test_an_html_body_gives_its_title():
    provider = PerplexityProvider(ProviderConfig())
    html = b"<html><head><title>401 Authorization Required</title></head><body>x</body></html>"
    exc = _error(provider, 401, html, model="sonar")
    assert exc.kind is ErrorKind.FATAL
    assert exc.code == "auth"
    assert exc.vendor_message == "401 Authorization Required"
    assert exc.message == "Perplexity rejected the key: set PERPLEXITY_API_KEY."


def test_anthropic_overloaded_and_credit_balance():
    provider = AnthropicProvider(ProviderConfig())
    overloaded = _error(
        provider,
        529,
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        {"retry-after": "2"},
    )
    assert (overloaded.kind, overloaded.code, overloaded.retry_after) == (
        ErrorKind.RETRYABLE,
        "overloaded",
        2.0,
    )
    credits = _error(
        provider,
        400,
        {
            "type": "error",
            "error": {"type": "invalid_request_error", "message": "Your credit balance is too low"},
        },
    )
    assert (credits.kind, credits.code) == (ErrorKind.FATAL, "credits")


def test_x_should_retry_false_overrides_a_5xx():
    exc = _error(OPENAI, 500, {"error": {"message": "boom"}}, {"x-should-retry": "false"})
    assert exc.kind is ErrorKind.FATAL
    assert exc.code == "server_error"


def test_an_empty_body_still_classifies():
    exc = _error(OPENAI, 502, b"")
    assert exc.kind is ErrorKind.RETRYABLE
    assert exc.message == "OpenAI had a server error with gpt-4o-mini; retrying may help."
