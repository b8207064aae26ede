"""The policy layer above the adapters: one reply's attempts, retried, queued and measured.

`run_chain()` is what everything above `providers/` calls. It yields the adapter events
(TextDelta, ReasoningDelta, Sources, Usage, Finish) plus its own:

- `Answering(provider, model, is_fallback, continued, warning)` before an attempt's events
  start to count;
- `Status(...)` while waiting (queue, backoff, fallback), for people to read.

Every provider attempt (retries and fallbacks each count) is appended to the caller's
`attempts` list when it ends, whatever way it ends, for telemetry.

How a turn goes:

1. Take the next target of the chain that validates in the catalog, whose provider has a key
   and which is not cooling down (a cooling target is still tried when nothing else is left).
2. Wait for a slot under the provider's and model's limits (`limits.py`), reporting the
   queue position.
3. Stream. Until the first visible event reaches the caller, a failure may be retried:
   rate-limited and retryable errors up to `LLM_MAX_RETRIES` times with exponential backoff
   (or the provider's Retry-After, if it is not too long); a daily quota, a queue timeout, an
   exhausted model or a fatal error that another model could avoid (auth, credits) falls back
   to the next target; any other fatal error ends the turn.
4. After the first visible event a failure raises (the caller keeps the partial text), unless
   `continue_partial` is on: then the next target is asked to continue the partial answer.
5. All of it shares one deadline: nothing starts, sleeps or waits for a first token past it.

It raises the last ProviderError when no attempt succeeded.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from django.conf import settings

from . import catalog
from .backoff import Backoff, Cooldown
from .base import (
    ChatRequest,
    ErrorKind,
    Event,
    Finish,
    ProviderError,
    ReasoningDelta,
    Sources,
    TextDelta,
    Turn,
    Usage,
)
from .catalog import ModelInfo, UnknownModelError
from .limits import Limiter, QueueTimeout, get_limiter, limits_for, queue_detail
from .registry import UnknownProviderError, get_provider

logger = logging.getLogger(__name__)

CONTINUE_PROMPT = (
    "Your previous answer was cut off. Continue it exactly where it stopped, without "
    "repeating anything or mentioning the interruption."
)

# Fatal errors another model cannot fix (the request itself is at fault, or the user asked
# for something that does not exist): no fallback. Auth, credits, quota, missing keys and
# permission problems belong to one provider account, so another model may well answer.
_NO_FALLBACK_CODES = frozenset(
    {"unknown_model", "bad_request", "content_filter", "context_length_exceeded"}
)
_FALLBACK_CODES = frozenset({"auth", "credits", "quota", "forbidden", "no_key"})


@dataclass(frozen=True, slots=True)
class Target:
    provider: str
    model: str

    def __str__(self) -> str:
        return f"{self.provider}:{self.model}"

    @classmethod
    def parse(cls, text: str) -> Target:
        """ "provider:model" (the model part may itself contain colons, as OpenRouter's do)."""
        provider, sep, model = text.partition(":")
        if not sep or not provider or not model:
            raise ValueError(f"{text!r} is not provider:model")
        return cls(provider.strip(), model.strip())


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
    continued: bool = False  # continues another model's partial answer ("continued by ...")
    warning: str = ""  # e.g. the model is deprecated
    display_name: str = ""


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
    if error.kind is ErrorKind.RATE_LIMITED and error.code != "queue_timeout":
        return "rate_limited"
    if error.code in ("timeout", "queue_timeout", "deadline"):
        return "timeout"
    return "error"


def _falls_back(error: ProviderError) -> bool:
    """Whether another model may succeed where this fatal error happened."""
    if error.code in _NO_FALLBACK_CODES:
        return False
    if error.code in _FALLBACK_CODES:
        return True
    return error.status not in (400, 404, 409, 413, 422)


def _why(error: ProviderError) -> str:
    """A few words in brackets after "failed": the status, else what happened."""
    if error.daily_quota:
        return "daily quota used up"
    if error.status:
        return str(error.status)
    return {
        "no_key": "no API key",
        "cooldown": "failing repeatedly",
        "queue_timeout": "too busy",
        "timeout": "timed out",
        "deadline": "out of time",
    }.get(error.code, error.code.replace("_", " ") or error.kind.value.replace("_", " "))


def _seconds(delay: float) -> str:
    return f"{max(1, round(delay))} s"


# --- Chains ----------------------------------------------------------------------------------


async def unusable_reason(target: Target) -> str:
    """Empty when `target` validates in the catalog and its provider has a key."""
    try:
        await catalog.aget_model(target.provider, target.model)
        provider = get_provider(target.provider)
    except (UnknownModelError, UnknownProviderError) as exc:
        return str(exc) or f"Unknown provider {target.provider!r}."
    return provider.unavailable_reason()


_skips_logged: set[tuple[Target, str]] = set()


async def filter_chain(chain: Sequence[Target | str]) -> list[Target]:
    """The usable targets of `chain`, in order, without repeats."""
    seen: set[Target] = set()
    usable: list[Target] = []
    for item in chain:
        try:
            target = item if isinstance(item, Target) else Target.parse(item)
        except ValueError:
            logger.warning("Skipping malformed fallback %r", item)
            continue
        if target in seen:
            continue
        seen.add(target)
        reason = await unusable_reason(target)
        if reason:
            # Once per process and reason: this runs for every reply.
            if (target, reason) not in _skips_logged:
                _skips_logged.add((target, reason))
                logger.info("Skipping fallback %s: %s (said once per process)", target, reason)
            continue
        usable.append(target)
    return usable


async def default_chain(
    provider: str, model: str, fallbacks: Sequence[Target | str] | None = None
) -> list[Target]:
    """The requested model followed by its usable fallbacks.

    `fallbacks` (e.g. an organisation's admin-edited list) replaces the catalog's per-model
    list when given. Deprecated models are left out of the catalog's list. The requested
    model itself is always first, even when it is unusable: `run_chain` then says why.
    """
    first = Target(provider, model)
    if fallbacks is None:
        try:
            info = await catalog.aget_model(provider, model)
        except UnknownModelError:
            return [first]
        candidates: list[Target | str] = []
        for text in info.fallbacks:
            try:
                target = Target.parse(text)
                if not (await catalog.aget_model(target.provider, target.model)).deprecated:
                    candidates.append(target)
            except (ValueError, UnknownModelError):
                logger.warning("Catalog fallback %r of %s is not a known model", text, first)
    else:
        candidates = list(fallbacks)
    rest = [t for t in await filter_chain(candidates) if t != first]
    return [first, *rest]


# --- The turn ----------------------------------------------------------------------------------

_cooldown: Cooldown | None = None


def shared_cooldown() -> Cooldown:
    """This process's record of failing models (per process by design: see Cooldown)."""
    global _cooldown
    if _cooldown is None:
        _cooldown = Cooldown.from_settings()
    return _cooldown


@dataclass(slots=True)
class _Options:
    continue_partial: bool
    deadline_s: float
    max_retries: int
    retry_after_max_s: float
    queue_max_wait_s: float
    backoff: Backoff
    cooldown: Cooldown
    limiter: Limiter
    clock: Callable[[], float]
    sleep: Callable[[float], Awaitable[None]]
    rng: random.Random | None


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def _display(provider_id: str) -> str:
    try:
        return get_provider(provider_id).display_name
    except UnknownProviderError:
        return provider_id


async def run_chain(
    request: ChatRequest,
    chain: Sequence[Target],
    attempts: list[Attempt],
    *,
    continue_partial: bool | None = None,
    deadline_s: float | None = None,
    max_retries: int | None = None,
    retry_after_max_s: float | None = None,
    queue_max_wait_s: float | None = None,
    backoff: Backoff | None = None,
    cooldown: Cooldown | None = None,
    limiter: Limiter | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    rng: random.Random | None = None,
) -> AsyncIterator[PolicyEvent]:
    """Answer `request` with the first target of `chain` that can, retrying and falling back.

    Keyword arguments default to the settings; `clock`, `sleep` and `rng` exist for tests.
    """
    opts = _Options(
        continue_partial=(
            settings.LLM_CONTINUE_PARTIAL if continue_partial is None else continue_partial
        ),
        deadline_s=settings.LLM_TURN_DEADLINE_S if deadline_s is None else deadline_s,
        max_retries=settings.LLM_MAX_RETRIES if max_retries is None else max_retries,
        retry_after_max_s=(
            settings.LLM_RETRY_AFTER_MAX_S if retry_after_max_s is None else retry_after_max_s
        ),
        queue_max_wait_s=(
            settings.LLM_QUEUE_MAX_WAIT_S if queue_max_wait_s is None else queue_max_wait_s
        ),
        backoff=backoff or Backoff.from_settings(),
        cooldown=cooldown or shared_cooldown(),
        limiter=limiter or get_limiter(),
        clock=clock,
        sleep=sleep,
        rng=rng,
    )
    if not chain:
        raise ValueError("run_chain needs at least one target")
    turn = _Turn(request, list(dict.fromkeys(chain)), attempts, opts)
    # aclosing: closing this generator must close the nested ones at once, so the stream is
    # closed, the slot given back and the attempt recorded before the caller goes on.
    async with aclosing(turn.run()) as events:
        async for event in events:
            yield event


class _Turn:
    """The state of one turn; `run()` is the generator behind run_chain."""

    def __init__(
        self,
        request: ChatRequest,
        targets: list[Target],
        attempts: list[Attempt],
        opts: _Options,
    ) -> None:
        self.request = request
        self.targets = targets
        self.attempts = attempts
        self.opts = opts
        self.deadline = opts.clock() + opts.deadline_s
        self.partial: list[str] = []  # answer text already delivered
        self.delivered = False  # a visible event reached the caller: no more retries
        self.continued = False
        self.number = 0

    def remaining(self) -> float:
        return self.deadline - self.opts.clock()

    def deadline_error(self, last: ProviderError) -> ProviderError:
        error = ProviderError(
            last.kind if last.kind is not ErrorKind.FATAL else ErrorKind.RETRYABLE,
            f"No model answered within {self.opts.deadline_s:g} s. Last problem: {last.message}",
            provider=last.provider,
            model=last.model,
            status=last.status,
            code="deadline",
        )
        error.__cause__ = last
        return error

    async def _check(self, index: int) -> ProviderError | None:
        """Why targets[index] cannot be tried now, as an error; None when it can."""
        target = self.targets[index]
        reason = await unusable_reason(target)
        if reason:
            code = "unknown_model" if "Unknown" in reason else "no_key"
            return ProviderError(
                ErrorKind.FATAL, reason, provider=target.provider, model=target.model, code=code
            )
        cooling = self.opts.cooldown.remaining(str(target))
        if cooling > 0:
            later = self.targets[index + 1 :]
            if any(self.opts.cooldown.remaining(str(t)) == 0 for t in later):
                return ProviderError(
                    ErrorKind.RETRYABLE,
                    f"{target.model} failed repeatedly; skipped for {_seconds(cooling)}.",
                    provider=target.provider,
                    model=target.model,
                    code="cooldown",
                )
        return None

    async def run(self) -> AsyncGenerator[PolicyEvent]:
        last: ProviderError | None = None
        failed_from: str | None = None  # model whose failure sent us down the chain
        index = 0
        while index < len(self.targets):
            target = self.targets[index]
            problem = await self._check(index)
            if problem is not None:
                if index == 0 or problem.code == "cooldown":
                    # The requested model (or a cooling one) is passed over visibly.
                    last, failed_from = problem, target.model
                index += 1
                continue
            if last is not None and not _falls_back_from(last, index):
                raise last
            info = await catalog.aget_model(target.provider, target.model)
            if failed_from is not None and last is not None:
                verb = "continues it" if self.continued else f"answering with {target.model}"
                mid = " mid-answer" if self.continued else ""
                yield Status(
                    "fallback",
                    f"{failed_from} failed ({_why(last)}){mid}; {verb}",
                    from_model=failed_from,
                    to_model=target.model,
                )
            if self.remaining() <= 0:
                raise (
                    self.deadline_error(last)
                    if last
                    else ProviderError(
                        ErrorKind.RETRYABLE,
                        "No time was left to ask any model.",
                        provider=target.provider,
                        model=target.model,
                        code="deadline",
                    )
                )
            error: ProviderError | None = None
            async with aclosing(self._target(index, info)) as events:
                async for event in events:
                    if isinstance(event, ProviderError):
                        error = event
                    else:
                        yield event
            if error is None:
                return
            last, failed_from = error, target.model
            if error.kind is ErrorKind.FATAL and not _falls_back(error):
                raise error
            if self.delivered:
                if not self.opts.continue_partial:
                    raise error
                self.continued = True
                self.delivered = False  # the continuation may be retried before its first token
            if self.remaining() <= 0:
                raise self.deadline_error(error)
            index += 1
        if last is None:  # pragma: no cover - chain is never empty
            raise RuntimeError("empty chain")
        raise last

    async def _target(
        self, index: int, info: ModelInfo
    ) -> AsyncGenerator[PolicyEvent | ProviderError]:
        """Try one target, with retries. Yields events, then the final error if it failed."""
        target = self.targets[index]
        opts = self.opts
        max_attempts = opts.max_retries + 1
        for tries in range(1, max_attempts + 1):
            error: ProviderError | None = None
            async with aclosing(self._attempt(index, info)) as events:
                async for event in events:
                    if isinstance(event, ProviderError):
                        error = event
                    else:
                        yield event
            if error is None:
                opts.cooldown.record(str(target), ok=True)
                return
            if error.code != "queue_timeout":
                opts.cooldown.record(str(target), ok=False)
            if self.delivered:
                yield error
                return
            delay = self._retry_delay(error, tries)
            if delay is None or tries == max_attempts:
                yield error
                return
            if error.kind is ErrorKind.RATE_LIMITED:
                detail = f"Hold on: {_display(target.provider)} is rate-limiting"
            else:
                detail = f"Hold on: {target.model} failed ({_why(error)})"
            yield Status(
                "retrying",
                f"{detail}; retrying in {_seconds(delay)} (attempt {tries + 1} of {max_attempts})",
                retry_in_s=round(delay, 2),
                attempt=tries + 1,
                max_attempts=max_attempts,
                from_model=target.model,
            )
            if error.kind is ErrorKind.RATE_LIMITED:
                # Other requests for this model now wait in its queue instead of collecting
                # 429s of their own.
                await opts.limiter.pause(str(target), delay)
            await opts.sleep(delay)

    def _retry_delay(self, error: ProviderError, tries: int) -> float | None:
        """Seconds to wait before retrying the same model, or None to move on."""
        opts = self.opts
        if error.kind is ErrorKind.FATAL or error.daily_quota:
            return None
        if error.code in ("queue_timeout", "deadline"):
            return None
        if error.retry_after is not None:
            if error.retry_after > opts.retry_after_max_s:
                return None  # a long wait is better spent on another model
            delay = max(0.0, error.retry_after)
        else:
            delay = opts.backoff.delay(tries, opts.rng)
        if delay >= self.remaining():
            return None
        return delay

    def _request_for(self, target: Target) -> ChatRequest:
        request = replace(self.request, provider=target.provider, model=target.model)
        if self.continued:
            so_far = "".join(self.partial)
            request = replace(
                request,
                turns=(
                    *request.turns,
                    Turn("assistant", so_far),
                    Turn("user", CONTINUE_PROMPT),
                ),
            )
        return request

    async def _attempt(
        self, index: int, info: ModelInfo
    ) -> AsyncGenerator[PolicyEvent | ProviderError]:
        """One request: queue, stream. Yields events, then a ProviderError if it failed."""
        target = self.targets[index]
        opts = self.opts
        self.number += 1
        attempt = Attempt(
            provider=target.provider,
            model=target.model,
            number=self.number,
            is_fallback=index > 0 or self.continued,
            started=datetime.now(UTC),
        )
        provider = get_provider(target.provider)
        t_queue = opts.clock()
        t0: float | None = None
        error: ProviderError | None = None
        slot = opts.limiter.slot(
            str(target),
            limits_for(info),
            max_wait_s=max(0.0, min(opts.queue_max_wait_s, self.remaining())),
        )
        try:
            async with slot:
                async for position in slot:
                    yield Status("queued", queue_detail(position), position=position)
                attempt.queued_ms = _ms(opts.clock() - t_queue)
                yield Answering(
                    target.provider,
                    target.model,
                    is_fallback=attempt.is_fallback,
                    continued=self.continued,
                    warning=info.warning,
                    display_name=info.display_name,
                )
                t0 = opts.clock()
                stream = provider.stream(self._request_for(target))
                try:
                    while (event := await self._next(stream, target)) is not None:
                        if attempt.ttft_ms is None and isinstance(
                            event, TextDelta | ReasoningDelta
                        ):
                            attempt.ttft_ms = _ms(opts.clock() - t0)
                        if isinstance(event, Usage):
                            attempt.usage = event
                        if isinstance(event, TextDelta):
                            self.partial.append(event.text)
                        if isinstance(event, TextDelta | ReasoningDelta | Sources):
                            self.delivered = True
                        yield event
                        if isinstance(event, Finish):
                            break
                finally:
                    await stream.aclose()  # type: ignore[attr-defined]
        except QueueTimeout as exc:
            error = exc
        except ProviderError as exc:
            error = exc
        except BaseException:
            attempt.outcome = "cancelled"
            raise
        finally:
            attempt.latency_ms = _ms(opts.clock() - (t0 if t0 is not None else t_queue))
            if error is not None:
                attempt.outcome = _outcome_for(error)
                attempt.http_status = error.status
                attempt.error_class = error.code or error.kind.value
                attempt.error_message = error.message
            self.attempts.append(attempt)
        if error is not None:
            yield error

    async def _next(self, stream: AsyncIterator[Event], target: Target) -> Event | None:
        """The stream's next event (None at its end); bounded by the deadline until the
        first visible event."""
        if self.delivered:
            return await anext(stream, None)
        left = self.remaining()
        try:
            if left <= 0:
                raise TimeoutError
            async with asyncio.timeout(left):
                return await anext(stream, None)
        except TimeoutError:
            raise ProviderError(
                ErrorKind.RETRYABLE,
                f"{target.model} did not start answering within the turn's "
                f"{self.opts.deadline_s:g} s.",
                provider=target.provider,
                model=target.model,
                code="deadline",
            ) from None


def _falls_back_from(last: ProviderError, index: int) -> bool:
    """Whether the turn may move on to targets[index] after `last`."""
    if index == 0:
        return True
    if last.kind is ErrorKind.FATAL:
        return _falls_back(last)
    return True
