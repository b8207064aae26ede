from __future__ import annotations

from providers.anthropic import AnthropicProvider
from providers.base import (
    ChatRequest,
    ErrorKind,
    Finish,
    FinishReason,
    ReasoningDelta,
    TextDelta,
    Turn,
    Usage,
)
from providers.fake import THOUGHT, reply_text
from tests.fake_server import chat, collect, failure


def _text(events) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


async def test_it_follows_the_event_sequence(adapter, fake_provider):
    fake_provider.script("anthropic", tokens=6, prompt_tokens=12)
    events = await collect(adapter(AnthropicProvider).stream(chat("claude-haiku-4-5")))

    assert _text(events) == reply_text(6)
    # output_tokens in message_delta is cumulative: the last value is the total.
    assert events[-2:] == [Usage(prompt_tokens=12, completion_tokens=6), Finish(FinishReason.STOP)]


async def test_it_sends_headers_system_and_merged_turns(adapter, fake_provider):
    request = ChatRequest(
        provider="",
        model="claude-haiku-4-5",
        system="Be terse.",
        turns=(
            Turn("user", "Hi"),
            Turn("user", "There?"),
            Turn("assistant", "Yes."),
            Turn("user", "Ok"),
        ),
    )
    await collect(adapter(AnthropicProvider).stream(request))

    sent = fake_provider.last_request
    assert sent.path == "/anthropic/v1/messages"
    assert sent.headers["x-api-key"] == "fake-key"
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.json["system"] == "Be terse."
    assert sent.json["max_tokens"] == 1024
    assert sent.json["messages"] == [
        {"role": "user", "content": "Hi\n\nThere?"},
        {"role": "assistant", "content": "Yes."},
        {"role": "user", "content": "Ok"},
    ]


async def test_max_tokens_is_passed_and_ends_with_length(adapter, fake_provider):
    events = await collect(
        adapter(AnthropicProvider).stream(chat("claude-haiku-4-5", max_tokens=3))
    )

    assert fake_provider.last_request.json["max_tokens"] == 3
    assert events[-1] == Finish(FinishReason.LENGTH)


async def test_thinking_deltas_are_reasoning(adapter, fake_provider):
    fake_provider.script("anthropic", think=True, tokens=2)
    events = await collect(adapter(AnthropicProvider).stream(chat("claude-sonnet-4-5")))

    assert "".join(e.text for e in events if isinstance(e, ReasoningDelta)) == THOUGHT
    assert _text(events) == reply_text(2)


async def test_refusal_is_a_content_filter_finish(adapter, fake_provider):
    fake_provider.script("anthropic", finish="refusal")
    events = await collect(adapter(AnthropicProvider).stream(chat("claude-sonnet-4-5")))
    assert events[-1] == Finish(FinishReason.CONTENT_FILTER)


async def test_an_error_event_mid_stream_is_retryable_overloaded(adapter, fake_provider):
    fake_provider.script("anthropic", fault="error", tokens=4)
    events, exc = await failure(adapter(AnthropicProvider).stream(chat("claude-sonnet-4-5")))

    assert _text(events) == reply_text(2)
    assert (exc.kind, exc.code, exc.vendor_message) == (
        ErrorKind.RETRYABLE,
        "overloaded",
        "Overloaded",
    )


async def test_529_is_retryable_with_retry_after(adapter, fake_provider):
    fake_provider.script("anthropic", status=529, retry_after="3")
    _, exc = await failure(adapter(AnthropicProvider).stream(chat("claude-sonnet-4-5")))

    assert (exc.status, exc.kind, exc.code, exc.retry_after) == (
        529,
        ErrorKind.RETRYABLE,
        "overloaded",
        3.0,
    )


async def test_429_is_rate_limited(adapter, fake_provider):
    fake_provider.script("anthropic", status=429)
    _, exc = await failure(adapter(AnthropicProvider).stream(chat("claude-sonnet-4-5")))

    assert (exc.kind, exc.retry_after) == (ErrorKind.RATE_LIMITED, 5.0)
    assert exc.message == "Anthropic is rate-limiting claude-sonnet-4-5; retry in 5 s."


async def test_bad_key_and_unknown_model(adapter, fake_provider):
    fake_provider.script("anthropic", status=401)
    fake_provider.script("anthropic", status=404)
    provider = adapter(AnthropicProvider)

    _, auth = await failure(provider.stream(chat("claude-sonnet-4-5")))
    _, missing = await failure(provider.stream(chat("claude-nine")))

    assert auth.message == "Anthropic rejected the key: set ANTHROPIC_API_KEY."
    assert auth.vendor_message == "invalid x-api-key"
    assert missing.message == "Anthropic has no model 'claude-nine' (or the key cannot use it)."


async def test_low_credit_balance_is_fatal(adapter, fake_provider):
    fake_provider.script("anthropic", status=402)
    _, exc = await failure(adapter(AnthropicProvider).stream(chat("claude-sonnet-4-5")))

    assert (exc.status, exc.kind, exc.code) == (400, ErrorKind.FATAL, "credits")


async def test_eof_before_message_stop_is_a_cut(adapter, fake_provider):
    fake_provider.script("anthropic", fault="cut")
    _, exc = await failure(adapter(AnthropicProvider).stream(chat("claude-sonnet-4-5")))

    assert exc.code == "stream_cut"


async def test_usage_is_estimated_when_missing(adapter, fake_provider):
    fake_provider.script("anthropic", no_usage=True)
    events = await collect(adapter(AnthropicProvider).stream(chat("claude-sonnet-4-5")))

    assert isinstance(events[-2], Usage) and events[-2].estimated
