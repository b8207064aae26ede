"""The policy layer above the adapters: one reply's attempts, measured.

`run_chain()` is what everything above `providers/` calls. It yields the adapter events
(TextDelta, ReasoningDelta, Sources, Usage, Finish) plus its own:

- `Answering(provider, model, is_fallback)` before an attempt's events start to count;
- `Status(...)` while waiting (queue, backoff, fallback), for people to read;
Every provider attempt (retries and fallbacks each count) is appended to the caller's
`attempts` list when it ends, whatever way it ends, for telemetry.

It raises the last ProviderError when no attempt succeeded.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from .base import (
    ChatRequest,
    ErrorKind,
    Event,
    Finish,
    ProviderError,
    ReasoningDelta,
    TextDelta,
    Usage,
)
from .registry import get_provider


@dataclass(frozen=True, slots=True)
class Target:
    provider: str
    model: str

    def __str__(self) -> str:
        return f"{self.provider}:{self.model}"


@dataclass(slots=True)
class Attempt:
    """One provider request, as telemetry records it."""

    provider: str
    model: str
    number: int
    is_fallback: bool
    started: datetime
    queued_ms: int = 0
    ttft_ms: int | None = None
    latency_ms: int | None = None
    outcome: str = "ok"  # ok, error, rate_limited, timeout, cancelled
    http_status: int | None = None
    error_class: str = ""
    error_message: str = ""
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class Answering:
    provider: str
    model: str
    is_fallback: bool = False


@dataclass(frozen=True, slots=True)
class Status:
    state: str  # queued, waiting, retrying, fallback
    detail: str
    position: int | None = None
    retry_in_s: float | None = None
    attempt: int | None = None
    max_attempts: int | None = None
    from_model: str | None = None
    to_model: str | None = None


PolicyEvent = Event | Answering | Status


def _outcome_for(error: ProviderError) -> str:
    if error.kind is ErrorKind.RATE_LIMITED:
        return "rate_limited"
    if error.code == "timeout":
        return "timeout"
    return "error"


async def run_chain(
    request: ChatRequest, chain: Sequence[Target], attempts: list[Attempt]
) -> AsyncIterator[PolicyEvent]:
    """Answer `request` with the first target of `chain` (no retries yet)."""
    target = chain[0]
    attempt = Attempt(
        provider=target.provider,
        model=target.model,
        number=1,
        is_fallback=False,
        started=datetime.now(UTC),
    )
    provider = get_provider(target.provider)
    yield Answering(target.provider, target.model)
    t0 = time.perf_counter()
    stream = provider.stream(replace(request, provider=target.provider, model=target.model))
    try:
        async for event in stream:
            if attempt.ttft_ms is None and isinstance(event, TextDelta | ReasoningDelta):
                attempt.ttft_ms = round((time.perf_counter() - t0) * 1000)
            if isinstance(event, Usage):
                attempt.usage = event
            yield event
            if isinstance(event, Finish):
                break
    except ProviderError as exc:
        attempt.outcome = _outcome_for(exc)
        attempt.http_status = exc.status
        attempt.error_class = exc.code or exc.kind.value
        attempt.error_message = exc.message
        raise
    except BaseException:
        attempt.outcome = "cancelled"
        raise
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
        attempt.latency_ms = round((time.perf_counter() - t0) * 1000)
        attempts.append(attempt)
