from __future__ import annotations

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
from providers.gemini import GeminiProvider
from tests.fake_server import chat, collect, failure


def _text(events) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


async def test_it_streams_text_and_reads_the_last_usage(adapter, fake_provider):
    fake_provider.script("gemini", tokens=5, prompt_tokens=7)
    events = await collect(adapter(GeminiProvider).stream(chat("gemini-2.0-flash")))

    assert _text(events) == reply_text(5)
    assert events[-2:] == [Usage(prompt_tokens=7, completion_tokens=5), Finish(FinishReason.STOP)]


async def test_it_sends_the_key_header_model_url_and_gemini_roles(adapter, fake_provider):
    request = ChatRequest(
        provider="",
        model="gemini-2.5-flash",
        system="Be terse.",
        max_tokens=100,
        temperature=0.2,
        turns=(
            Turn("assistant", "Welcome!"),
            Turn("user", "Hi"),
            Turn("user", "Still there?"),
            Turn("assistant", "Yes."),
            Turn("user", "Capital of France?"),
        ),
    )
    await collect(adapter(GeminiProvider).stream(request))

    sent = fake_provider.last_request
    assert sent.path == "/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    assert sent.query == "alt=sse"
    assert sent.headers["x-goog-api-key"] == "fake-key"
    assert "authorization" not in sent.headers
    assert sent.json["systemInstruction"] == {"parts": [{"text": "Be terse."}]}
    assert [(c["role"], c["parts"][0]["text"]) for c in sent.json["contents"]] == [
        ("user", "(conversation start)"),
        ("model", "Welcome!"),
        ("user", "Hi\n\nStill there?"),
        ("model", "Yes."),
        ("user", "Capital of France?"),
    ]
    assert sent.json["generationConfig"] == {
        "maxOutputTokens": 100,
        "temperature": 0.2,
        "thinkingConfig": {"includeThoughts": True},
    }


async def test_thought_parts_are_reasoning_and_count_as_completion(adapter, fake_provider):
    fake_provider.script("gemini", think=True, tokens=3, prompt_tokens=10)
    events = await collect(adapter(GeminiProvider).stream(chat("gemini-2.5-flash")))

    assert "".join(e.text for e in events if isinstance(e, ReasoningDelta)) == THOUGHT
    assert _text(events) == reply_text(3)
    assert events[-2] == Usage(prompt_tokens=10, completion_tokens=3 + 5, reasoning_tokens=5)


async def test_max_tokens_finishes_with_length(adapter):
    events = await collect(adapter(GeminiProvider).stream(chat("gemini-2.0-flash", max_tokens=2)))
    assert events[-1] == Finish(FinishReason.LENGTH)


async def test_safety_finishes_with_content_filter(adapter, fake_provider):
    fake_provider.script("gemini", finish="SAFETY")
    events = await collect(adapter(GeminiProvider).stream(chat("gemini-2.0-flash")))
    assert events[-1] == Finish(FinishReason.CONTENT_FILTER)


async def test_a_blocked_prompt_is_a_fatal_content_filter_error(adapter, fake_provider):
    fake_provider.script("gemini", blocked=True)
    _, exc = await failure(adapter(GeminiProvider).stream(chat("gemini-2.0-flash")))

    assert (exc.kind, exc.code) == (ErrorKind.FATAL, "content_filter")
    assert "SAFETY" in exc.message


async def test_rate_limit_reads_retry_info(adapter, fake_provider):
    fake_provider.script("gemini", status=429, retry_after="45.25")
    _, exc = await failure(adapter(GeminiProvider).stream(chat("gemini-2.5-flash")))

    assert (exc.kind, exc.code, exc.retry_after) == (ErrorKind.RATE_LIMITED, "rate_limited", 45.25)
    assert exc.daily_quota is False
    assert exc.message == "Gemini is rate-limiting gemini-2.5-flash; retry in 46 s."


async def test_a_per_day_quota_is_flagged(adapter, fake_provider):
    fake_provider.script("gemini", status=429, daily=True)
    _, exc = await failure(adapter(GeminiProvider).stream(chat("gemini-2.5-flash")))

    assert exc.daily_quota is True
    assert exc.retry_after == 19.0


async def test_a_bad_key_is_a_400_that_reads_as_auth(adapter):
    _, exc = await failure(adapter(GeminiProvider).stream(chat("gemini-2.5-flash~401")))

    assert (exc.status, exc.code, exc.kind) == (400, "auth", ErrorKind.FATAL)
    assert exc.message == "Gemini rejected the key: set GEMINI_API_KEY."


async def test_unknown_model(adapter, fake_provider):
    fake_provider.script("gemini", status=404)
    _, exc = await failure(adapter(GeminiProvider).stream(chat("gemini-9")))

    assert exc.code == "unknown_model"
    assert exc.vendor_message.startswith("models/gemini-9 is not found")


async def test_overloaded_is_retryable(adapter, fake_provider):
    fake_provider.script("gemini", status=503)
    _, exc = await failure(adapter(GeminiProvider).stream(chat("gemini-2.5-flash")))

    assert (exc.kind, exc.code) == (ErrorKind.RETRYABLE, "overloaded")


async def test_an_in_stream_error_fails_the_reply(adapter, fake_provider):
    fake_provider.script("gemini", fault="error", tokens=4)
    events, exc = await failure(adapter(GeminiProvider).stream(chat("gemini-2.5-flash")))

    assert _text(events) == reply_text(2)
    assert exc.code == "in_stream_error"
    assert exc.vendor_message.startswith("An internal error has occurred")


async def test_eof_without_a_finish_reason_is_a_cut(adapter, fake_provider):
    fake_provider.script("gemini", fault="cut")
    _, exc = await failure(adapter(GeminiProvider).stream(chat("gemini-2.5-flash")))

    assert exc.code == "stream_cut"


async def test_malformed_chunk(adapter, fake_provider):
    fake_provider.script("gemini", fault="malformed")
    _, exc = await failure(adapter(GeminiProvider).stream(chat("gemini-2.5-flash")))

    assert exc.code == "malformed"


async def test_it_estimates_usage_when_none_is_sent(adapter, fake_provider):
    fake_provider.script("gemini", no_usage=True)
    events = await collect(adapter(GeminiProvider).stream(chat("gemini-2.5-flash")))

    assert isinstance(events[-2], Usage) and events[-2].estimated
