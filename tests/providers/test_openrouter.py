from __future__ import annotations

from decimal import Decimal

from providers.base import ErrorKind, Finish, FinishReason, ReasoningDelta, TextDelta, Usage
from providers.fake import THOUGHT, reply_text
from providers.openrouter import OpenRouterProvider
from tests.fake_server import chat, collect, failure


def _text(events) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


async def test_it_skips_keep_alives_and_reads_the_accounting_frame(adapter, fake_provider):
    fake_provider.script("openrouter", tokens=7, prompt_tokens=14, cost=0.0000123)
    events = await collect(adapter(OpenRouterProvider).stream(chat("openai/gpt-4o-mini")))

    assert _text(events) == reply_text(7)
    # The usage chunk repeats finish_reason; it must not end or duplicate anything.
    assert events[-2:] == [
        Usage(prompt_tokens=14, completion_tokens=7, vendor_cost_usd=Decimal("0.0000123")),
        Finish(FinishReason.STOP),
    ]
    assert sum(isinstance(e, Finish) for e in events) == 1


async def test_it_sends_attribution_headers(adapter, fake_provider, settings):
    settings.SITE_URL = "https://chat.example.com"
    await collect(adapter(OpenRouterProvider).stream(chat("openai/gpt-4o-mini")))

    sent = fake_provider.last_request
    assert sent.path == "/openrouter/api/v1/chat/completions"
    assert sent.headers["http-referer"] == "https://chat.example.com"
    assert sent.headers["x-openrouter-title"] == "Chat"
    assert sent.headers["authorization"] == "Bearer fake-key"


async def test_reasoning_deltas_are_reasoning(adapter, fake_provider):
    fake_provider.script("openrouter", think=True, tokens=2)
    events = await collect(adapter(OpenRouterProvider).stream(chat("deepseek/deepseek-r1")))

    assert "".join(e.text for e in events if isinstance(e, ReasoningDelta)) == THOUGHT
    assert _text(events) == reply_text(2)


async def test_an_in_stream_error_chunk_fails_the_reply(adapter, fake_provider):
    fake_provider.script("openrouter", fault="error", tokens=6)
    events, exc = await failure(adapter(OpenRouterProvider).stream(chat("openai/gpt-4o-mini")))

    assert _text(events) == reply_text(3)
    assert (exc.kind, exc.code) == (ErrorKind.RETRYABLE, "in_stream_error")
    assert exc.vendor_message == "Provider disconnected unexpectedly"


async def test_402_is_fatal_and_says_to_add_credits(adapter, fake_provider):
    fake_provider.script("openrouter", status=402)
    _, exc = await failure(adapter(OpenRouterProvider).stream(chat("openai/gpt-4o-mini")))

    assert (exc.kind, exc.code) == (ErrorKind.FATAL, "credits")
    assert exc.message == (
        "OpenRouter has no credits left for openai/gpt-4o-mini: "
        "add credits at https://openrouter.ai/settings/credits."
    )


async def test_429_reads_the_reset_from_metadata_headers(adapter, fake_provider):
    fake_provider.script("openrouter", status=429, retry_after="30")
    _, exc = await failure(adapter(OpenRouterProvider).stream(chat("meta/llama:free")))

    assert exc.kind is ErrorKind.RATE_LIMITED
    assert 28 <= exc.retry_after <= 30
    assert exc.daily_quota is False


async def test_free_models_per_day_is_a_daily_quota(adapter, fake_provider):
    fake_provider.script("openrouter", status=429, daily=True)
    _, exc = await failure(adapter(OpenRouterProvider).stream(chat("meta/llama:free")))

    assert exc.daily_quota is True
    assert "daily quota for meta/llama:free" in exc.message


async def test_invalid_model_400_is_unknown_model(adapter, fake_provider):
    fake_provider.script("openrouter", status=404)
    _, exc = await failure(adapter(OpenRouterProvider).stream(chat("nobody/nothing")))

    assert (exc.status, exc.code) == (400, "unknown_model")


async def test_a_cut_before_done_is_a_cut(adapter, fake_provider):
    fake_provider.script("openrouter", fault="cut")
    _, exc = await failure(adapter(OpenRouterProvider).stream(chat("openai/gpt-4o-mini")))

    assert exc.code == "stream_cut"
