from __future__ import annotations

import asyncio
import random

import pytest

from providers import catalog, registry
from providers.backoff import Backoff, Cooldown
from providers.base import (
    ChatRequest,
    ErrorKind,
    Finish,
    FinishReason,
    Provider,
    ProviderConfig,
    ProviderError,
    TextDelta,
    Turn,
    Usage,
)
from providers.limits import Limit, LocalLimiter
from providers.policy import (
    CONTINUE_PROMPT,
    Answering,
    Status,
    Target,
    default_chain,
    filter_chain,
    run_chain,
)

HANG = object()


class Scripted(Provider):
    """An adapter that plays one script per request: text pieces, errors, or HANG."""

    needs_key = False

    def __init__(self, provider_id: str, display_name: str, *, has_key: bool = True) -> None:
        super().__init__(ProviderConfig(api_key="k" if has_key else ""))
        self.id = provider_id  # type: ignore[misc]
        self.display_name = display_name  # type: ignore[misc]
        self.needs_key = True  # type: ignore[misc]
        self.scripts: list[list[object]] = []
        self.requests: list[ChatRequest] = []
        self.closed = 0

    def play(self, *scripts: list[object]) -> None:
        self.scripts.extend(scripts)

    async def stream(self, request: ChatRequest):
        self.requests.append(request)
        script = self.scripts.pop(0) if self.scripts else ["ok"]
        try:
            for item in script:
                if isinstance(item, ProviderError):
                    raise item
                if item is HANG:
                    await asyncio.Event().wait()
                yield TextDelta(str(item))
            yield Usage(prompt_tokens=3, completion_tokens=len(script))
            yield Finish(FinishReason.STOP)
        finally:
            self.closed += 1


def error(kind=ErrorKind.RETRYABLE, status=503, code="overloaded", **kwargs) -> ProviderError:
    return ProviderError(
        kind, f"failed with {status}", provider="x", model="y", status=status, code=code, **kwargs
    )


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def adapters(settings, monkeypatch):
    settings.LLM_LIMITS = {}
    monkeypatch.setattr(catalog, "_db_rows", lambda: [])  # the catalog file, no database
    catalog.clear_cache()
    instances = {
        "openai": Scripted("openai", "OpenAI"),
        "gemini": Scripted("gemini", "Gemini"),
        "anthropic": Scripted("anthropic", "Anthropic", has_key=False),
        "openrouter": Scripted("openrouter", "OpenRouter"),
        "perplexity": Scripted("perplexity", "Perplexity"),
    }
    monkeypatch.setattr(registry, "_instances", dict(instances))
    yield instances
    catalog.clear_cache()


@pytest.fixture
def fake_time():
    return FakeTime()


@pytest.fixture
def run(fake_time):
    """run_chain with a controllable clock and sleep; returns (events, attempts)."""

    async def go(chain, *, request=None, cooldown=None, limiter=None, **kwargs):
        request = request or ChatRequest(
            provider="", model="", turns=(Turn("user", "Hello"),), system="Be brief."
        )
        targets = [t if isinstance(t, Target) else Target.parse(t) for t in chain]
        attempts: list = []
        events: list = []
        kwargs.setdefault("deadline_s", 60)
        try:
            async for event in run_chain(
                request,
                targets,
                attempts,
                clock=fake_time.clock,
                sleep=fake_time.sleep,
                rng=random.Random(7),
                cooldown=cooldown or Cooldown(clock=fake_time.clock),
                limiter=limiter or LocalLimiter(clock=fake_time.clock),
                **kwargs,
            ):
                events.append(event)
        except ProviderError as exc:
            exc.events = events  # type: ignore[attr-defined]
            exc.attempts = attempts  # type: ignore[attr-defined]
            raise
        return events, attempts

    return go


def text(events) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def statuses(events) -> list[Status]:
    return [e for e in events if isinstance(e, Status)]


def answering(events) -> list[Answering]:
    return [e for e in events if isinstance(e, Answering)]


# --- Backoff -------------------------------------------------------------------------------------


def test_backoff_doubles_from_one_second_up_to_the_cap():
    backoff = Backoff()
    assert [backoff.ceiling(n) for n in range(1, 7)] == [1, 2, 4, 8, 8, 8]


def test_backoff_jitter_stays_within_bounds():
    backoff = Backoff(jitter=0.25)
    rng = random.Random(1)
    for retry, ceiling in enumerate([1, 2, 4, 8, 8], start=1):
        delays = [backoff.delay(retry, rng) for _ in range(200)]
        assert all(ceiling * 0.75 <= d <= ceiling for d in delays)
        assert len({round(d, 6) for d in delays}) > 1  # actually jittered


# --- Retries -------------------------------------------------------------------------------------


async def test_it_answers_at_once_when_nothing_fails(adapters, run, fake_time):
    adapters["openai"].play(["Hi", " there"])
    events, attempts = await run(["openai:gpt-4o-mini"])
    assert text(events) == "Hi there"
    assert answering(events) == [
        Answering("openai", "gpt-4o-mini", display_name="GPT-4o mini"),
    ]
    assert statuses(events) == []
    assert [(a.number, a.outcome, a.is_fallback) for a in attempts] == [(1, "ok", False)]
    assert attempts[0].usage == Usage(prompt_tokens=3, completion_tokens=2)
    assert attempts[0].ttft_ms == 0 and attempts[0].queued_ms == 0
    assert fake_time.sleeps == []


async def test_retryable_errors_are_retried_with_backoff(adapters, run, fake_time):
    adapters["openai"].play([error()], [error()], ["Hi"])
    events, attempts = await run(["openai:gpt-4o-mini"])
    assert text(events) == "Hi"
    assert len(fake_time.sleeps) == 2
    assert 0.75 <= fake_time.sleeps[0] <= 1
    assert 1.5 <= fake_time.sleeps[1] <= 2
    retrying = statuses(events)
    assert [(s.state, s.attempt, s.max_attempts) for s in retrying] == [
        ("retrying", 2, 3),
        ("retrying", 3, 3),
    ]
    assert retrying[0].detail.startswith("Hold on: gpt-4o-mini failed (503); retrying in 1 s")
    assert [(a.number, a.outcome, a.http_status, a.error_class) for a in attempts] == [
        (1, "error", 503, "overloaded"),
        (2, "error", 503, "overloaded"),
        (3, "ok", None, ""),
    ]


async def test_retry_after_is_honoured(adapters, run, fake_time):
    limited = error(ErrorKind.RATE_LIMITED, 429, "rate_limited", retry_after=4)
    adapters["openai"].play([limited], ["Hi"])
    events, attempts = await run(["openai:gpt-4o-mini"])
    assert fake_time.sleeps == [4]
    [status] = statuses(events)
    assert status.detail == "Hold on: OpenAI is rate-limiting; retrying in 4 s (attempt 2 of 3)"
    assert status.retry_in_s == 4
    assert attempts[0].outcome == "rate_limited"


async def test_a_rate_limited_model_holds_back_other_requests(adapters, run, fake_time):
    limiter = LocalLimiter(clock=fake_time.clock)
    limited = error(ErrorKind.RATE_LIMITED, 429, "rate_limited", retry_after=4)
    adapters["openai"].play([limited], ["Hi"])
    paused = []
    real_sleep = fake_time.sleep

    async def sleep_and_look(seconds):
        # While this request waits out its Retry-After, a new one for the model must queue.
        other = limiter.slot("openai:gpt-4o-mini", (Limit("openai:gpt-4o-mini"),), max_wait_s=9)
        paused.append(await anext(other))
        await other.release()
        await real_sleep(seconds)

    fake_time.sleep = sleep_and_look
    events, attempts = await run(["openai:gpt-4o-mini"], limiter=limiter)
    assert paused == [1]
    assert text(events) == "Hi"


async def test_a_retry_after_beyond_the_cap_falls_back_instead(adapters, run, fake_time):
    limited = error(ErrorKind.RATE_LIMITED, 429, "rate_limited", retry_after=31)
    adapters["openai"].play([limited])
    adapters["gemini"].play(["From Gemini"])
    events, attempts = await run(
        ["openai:gpt-4o-mini", "gemini:gemini-2.5-flash"], retry_after_max_s=30
    )
    assert fake_time.sleeps == []
    assert text(events) == "From Gemini"
    [status] = statuses(events)
    assert (status.state, status.from_model, status.to_model) == (
        "fallback",
        "gpt-4o-mini",
        "gemini-2.5-flash",
    )


async def test_a_model_is_retried_at_most_twice_then_the_chain_falls_back(adapters, run, fake_time):
    adapters["openai"].play([error()], [error()], [error()])
    adapters["gemini"].play(["Gemini here"])
    events, attempts = await run(["openai:gpt-4o-mini", "gemini:gemini-2.5-flash"])
    assert len(adapters["openai"].requests) == 3
    assert text(events) == "Gemini here"
    assert (
        statuses(events)[-1].detail == "gpt-4o-mini failed (503); answering with gemini-2.5-flash"
    )
    assert answering(events)[-1].is_fallback
    assert [(a.model, a.number, a.is_fallback) for a in attempts] == [
        ("gpt-4o-mini", 1, False),
        ("gpt-4o-mini", 2, False),
        ("gpt-4o-mini", 3, False),
        ("gemini-2.5-flash", 4, True),
    ]
    # The fallback request goes to the fallback's model.
    assert adapters["gemini"].requests[0].model == "gemini-2.5-flash"


async def test_a_daily_quota_falls_back_at_once(adapters, run, fake_time):
    quota = error(ErrorKind.RATE_LIMITED, 429, "rate_limited", retry_after=5, daily_quota=True)
    adapters["openai"].play([quota])
    adapters["gemini"].play(["ok"])
    events, attempts = await run(["openai:gpt-4o-mini", "gemini:gemini-2.5-flash"])
    assert fake_time.sleeps == []
    assert len(adapters["openai"].requests) == 1
    assert statuses(events)[0].detail == (
        "gpt-4o-mini failed (daily quota used up); answering with gemini-2.5-flash"
    )


async def test_a_daily_quota_with_nowhere_to_go_fails_clearly(adapters, run, fake_time):
    quota = error(ErrorKind.RATE_LIMITED, 429, "rate_limited", daily_quota=True)
    adapters["openai"].play([quota])
    with pytest.raises(ProviderError) as info:
        await run(["openai:gpt-4o-mini"])
    assert info.value.daily_quota
    assert fake_time.sleeps == []
    assert len(adapters["openai"].requests) == 1


async def test_an_unknown_model_error_does_not_fall_back(adapters, run):
    adapters["openai"].play([error(ErrorKind.FATAL, 404, "unknown_model")])
    with pytest.raises(ProviderError) as info:
        await run(["openai:gpt-4o-mini", "gemini:gemini-2.5-flash"])
    assert info.value.code == "unknown_model"
    assert adapters["gemini"].requests == []
    assert len(adapters["openai"].requests) == 1


async def test_auth_and_credit_errors_fall_back_without_retrying(adapters, run, fake_time):
    adapters["openai"].play([error(ErrorKind.FATAL, 401, "auth")])
    adapters["gemini"].play([error(ErrorKind.FATAL, 402, "credits")])
    adapters["perplexity"].play(["answer"])
    events, attempts = await run(
        ["openai:gpt-4o-mini", "gemini:gemini-2.5-flash", "perplexity:sonar"]
    )
    assert text(events) == "answer"
    assert fake_time.sleeps == []
    assert [a.outcome for a in attempts] == ["error", "error", "ok"]


async def test_a_requested_model_that_is_not_in_the_catalog_fails_without_fallback(adapters, run):
    with pytest.raises(ProviderError) as info:
        await run(["openai:gpt-4o-mega", "gemini:gemini-2.5-flash"])
    assert info.value.code == "unknown_model"
    assert "Did you mean" in info.value.message
    assert adapters["gemini"].requests == []


async def test_a_provider_without_a_key_falls_back(adapters, run):
    events, attempts = await run(["anthropic:claude-haiku-4-5", "gemini:gemini-2.5-flash"])
    assert text(events) == "ok"
    assert "no API key" in statuses(events)[0].detail
    assert [a.provider for a in attempts] == ["gemini"]


# --- Chains -------------------------------------------------------------------------------------


async def test_the_default_chain_comes_from_the_catalog_and_is_filtered(adapters):
    # Catalog: gpt-4o-mini -> gemini-2.5-flash-lite, claude-haiku-4-5, openrouter gpt-4o-mini.
    chain = await default_chain("openai", "gpt-4o-mini")
    assert [str(t) for t in chain] == [
        "openai:gpt-4o-mini",
        "gemini:gemini-2.5-flash-lite",  # anthropic has no key: left out
        "openrouter:openai/gpt-4o-mini",
    ]


async def test_the_default_chain_leaves_out_deprecated_fallbacks(adapters):
    chain = await default_chain("openai", "gpt-3.5-turbo")
    assert [str(t) for t in chain] == ["openai:gpt-3.5-turbo", "openai:gpt-4o-mini"]


async def test_an_organisation_chain_is_validated(adapters):
    chain = await default_chain(
        "openai",
        "gpt-4o",
        fallbacks=[
            "gemini:gemini-2.5-pro",
            "gemini:gemini-9-ultra",  # unknown model
            "nonsense",  # malformed
            "anthropic:claude-sonnet-4-5",  # no key
            "openrouter:openai/gpt-4o-mini:floor",
            "gemini:gemini-2.5-pro",  # repeat
            "openai:gpt-4o",  # the model itself
        ],
    )
    assert [str(t) for t in chain] == [
        "openai:gpt-4o",
        "gemini:gemini-2.5-pro",
        "openrouter:openai/gpt-4o-mini:floor",
    ]
    assert await filter_chain(["openai_compat:llama3.2"]) == []  # no key configured


# --- After the first token -------------------------------------------------------------------------


async def test_no_fallback_after_the_first_token(adapters, run, fake_time):
    adapters["openai"].play(["Partial", " answer", error()])
    with pytest.raises(ProviderError) as info:
        await run(["openai:gpt-4o-mini", "gemini:gemini-2.5-flash"])
    assert text(info.value.events) == "Partial answer"
    assert adapters["gemini"].requests == []
    assert fake_time.sleeps == []
    assert [a.outcome for a in info.value.attempts] == ["error"]
    assert adapters["openai"].closed == 1


async def test_continue_mode_hands_the_partial_answer_to_the_fallback(adapters, run):
    adapters["openai"].play(["The capital", " of France", error()])
    adapters["gemini"].play([" is Paris."])
    events, attempts = await run(
        ["openai:gpt-4o-mini", "gemini:gemini-2.5-flash"], continue_partial=True
    )
    assert text(events) == "The capital of France is Paris."
    continuing = answering(events)[-1]
    assert (continuing.model, continuing.is_fallback, continuing.continued) == (
        "gemini-2.5-flash",
        True,
        True,
    )
    assert statuses(events)[-1].detail == "gpt-4o-mini failed (503) mid-answer; continues it"
    turns = adapters["gemini"].requests[0].turns
    assert turns[-2:] == (
        Turn("assistant", "The capital of France"),
        Turn("user", CONTINUE_PROMPT),
    )
    assert [a.outcome for a in attempts] == ["error", "ok"]


# --- Cooldown and deadline ----------------------------------------------------------------------


def test_a_model_cools_down_after_three_failures_in_a_minute(fake_time):
    cooldown = Cooldown(failures=3, window_s=60, cool_s=10, clock=fake_time.clock)
    for _ in range(2):
        cooldown.record("openai:gpt-4o", ok=False)
    assert cooldown.remaining("openai:gpt-4o") == 0
    fake_time.now += 61  # the old failures leave the window
    cooldown.record("openai:gpt-4o", ok=False)
    assert cooldown.remaining("openai:gpt-4o") == 0
    cooldown.record("openai:gpt-4o", ok=False)
    cooldown.record("openai:gpt-4o", ok=False)
    assert cooldown.remaining("openai:gpt-4o") == 10
    fake_time.now += 10
    assert cooldown.remaining("openai:gpt-4o") == 0


def test_a_model_cools_down_when_half_of_five_requests_fail(fake_time):
    cooldown = Cooldown(failures=99, min_requests=5, clock=fake_time.clock)
    for ok in (True, False, True, False):
        cooldown.record("gemini:x", ok=ok)
    assert cooldown.remaining("gemini:x") == 0
    cooldown.record("gemini:x", ok=False)  # 3 of 5 failed
    assert cooldown.remaining("gemini:x") > 0


async def test_fallbacks_go_straight_past_a_cooling_model(adapters, run, fake_time):
    cooldown = Cooldown(clock=fake_time.clock)
    for _ in range(3):
        cooldown.record("openai:gpt-4o-mini", ok=False)
    events, attempts = await run(
        ["openai:gpt-4o-mini", "gemini:gemini-2.5-flash"], cooldown=cooldown
    )
    assert adapters["openai"].requests == []
    assert [a.model for a in attempts] == ["gemini-2.5-flash"]
    assert statuses(events)[0].detail == (
        "gpt-4o-mini failed (failing repeatedly); answering with gemini-2.5-flash"
    )


async def test_a_cooling_model_is_still_tried_when_nothing_else_is_left(adapters, run, fake_time):
    cooldown = Cooldown(clock=fake_time.clock)
    for _ in range(3):
        cooldown.record("openai:gpt-4o-mini", ok=False)
    events, attempts = await run(["openai:gpt-4o-mini"], cooldown=cooldown)
    assert text(events) == "ok"


async def test_failures_feed_the_cooldown(adapters, run, fake_time):
    cooldown = Cooldown(clock=fake_time.clock)
    adapters["openai"].play([error()], [error()], [error()])
    await run(["openai:gpt-4o-mini", "gemini:gemini-2.5-flash"], cooldown=cooldown)
    assert cooldown.remaining("openai:gpt-4o-mini") > 0
    assert cooldown.remaining("gemini:gemini-2.5-flash") == 0


async def test_retries_and_fallbacks_share_one_deadline(adapters, run, fake_time):
    adapters["openai"].play(*[[error()]] * 3)
    adapters["gemini"].play(*[[error()]] * 3)
    with pytest.raises(ProviderError):
        await run(["openai:gpt-4o-mini", "gemini:gemini-2.5-flash"], deadline_s=2.5)
    # No wait was started that would end past the deadline.
    assert sum(fake_time.sleeps) < 2.5
    assert len(fake_time.sleeps) == 2  # 1 s and ~1 s fit; another 2 s would not


async def test_a_model_that_never_starts_is_cut_off_at_the_deadline(adapters):
    adapters["openai"].play([HANG])
    attempts: list = []
    request = ChatRequest(provider="", model="", turns=(Turn("user", "Hi"),))
    with pytest.raises(ProviderError) as info:
        async for _ in run_chain(
            request,
            [Target("openai", "gpt-4o-mini")],
            attempts,
            # Long enough that a busy machine still starts the attempt inside it (at 0.05 s
            # the turn sometimes ran out before its first attempt, which then never ran).
            deadline_s=0.5,
            cooldown=Cooldown(),
            limiter=LocalLimiter(),
        ):
            pass
    assert info.value.code == "deadline"
    assert [a.outcome for a in attempts] == ["timeout"]
    assert adapters["openai"].closed == 1


# --- Queue, cancellation, warnings ------------------------------------------------------------------


async def test_a_queued_request_reports_its_position(adapters, settings, fake_time):
    settings.LLM_LIMITS = {"openai:gpt-4o-mini": (1, None)}
    registry._instances.update(adapters)  # changing an LLM_ setting resets the registry
    limiter = LocalLimiter()
    held = limiter.slot("openai:gpt-4o-mini", (Limit("openai:gpt-4o-mini", 1),), max_wait_s=5)
    assert [p async for p in held] == []

    seen: asyncio.Queue = asyncio.Queue()
    attempts: list = []

    async def consume():
        request = ChatRequest(provider="", model="", turns=(Turn("user", "Hi"),))
        async for event in run_chain(
            request,
            [Target("openai", "gpt-4o-mini")],
            attempts,
            limiter=limiter,
            cooldown=Cooldown(),
        ):
            await seen.put(event)

    task = asyncio.create_task(consume())
    status = await asyncio.wait_for(seen.get(), 5)
    assert status == Status("queued", "Hold on: you are next in line", position=1)
    await held.release()
    await asyncio.wait_for(task, 5)
    assert isinstance(await seen.get(), Answering)
    assert attempts[0].outcome == "ok"


async def test_cancelling_a_turn_records_a_cancelled_attempt(adapters):
    adapters["openai"].play(["First words", HANG])
    attempts: list = []
    first = asyncio.Event()

    async def consume():
        request = ChatRequest(provider="", model="", turns=(Turn("user", "Hi"),))
        async for event in run_chain(
            request,
            [Target("openai", "gpt-4o-mini")],
            attempts,
            cooldown=Cooldown(),
            limiter=LocalLimiter(),
        ):
            if isinstance(event, TextDelta):
                first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [a.outcome for a in attempts] == ["cancelled"]
    assert adapters["openai"].closed == 1


async def test_closing_the_stream_early_records_the_attempt(adapters, run):
    adapters["openai"].play(["one", "two", "three"])
    attempts: list = []
    request = ChatRequest(provider="", model="", turns=(Turn("user", "Hi"),))
    stream = run_chain(
        request,
        [Target("openai", "gpt-4o-mini")],
        attempts,
        cooldown=Cooldown(),
        limiter=LocalLimiter(),
    )
    async for event in stream:
        if isinstance(event, TextDelta):
            break
    await stream.aclose()
    assert [a.outcome for a in attempts] == ["cancelled"]
    assert adapters["openai"].closed == 1


async def test_a_deprecated_model_answers_with_a_warning(adapters, run):
    events, attempts = await run(["openai:gpt-3.5-turbo"])
    [answer] = answering(events)
    assert "deprecated" in answer.warning
    assert "gpt-4o-mini" in answer.warning
    assert text(events) == "ok"
