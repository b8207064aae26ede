from __future__ import annotations

import asyncio
import socket
from contextlib import aclosing

import pytest

from providers.base import (
    ErrorKind,
    Finish,
    FinishReason,
    ProviderConfig,
    ProviderError,
    ReasoningDelta,
    TextDelta,
    Usage,
)
from providers.fake import reply_text
from providers.openai import OpenAICompatProvider, OpenAIProvider
from tests.fake_server import chat, collect, failure


def _text(events) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


async def test_it_streams_text_then_usage_then_finish(adapter, fake_provider):
    fake_provider.script("openai", tokens=6, prompt_tokens=21)
    events = await collect(adapter(OpenAIProvider).stream(chat("gpt-4o-mini")))

    assert _text(events) == reply_text(6)
    assert events[-2:] == [
        Usage(prompt_tokens=21, completion_tokens=6),
        Finish(FinishReason.STOP),
    ]


async def test_it_sends_the_whole_conversation(adapter, fake_provider):
    request = chat("gpt-4o-mini", "Hi", "Hello.", "Capital of France?", system="Be terse.")
    await collect(adapter(OpenAIProvider).stream(request))

    sent = fake_provider.last_request
    assert sent.path == "/openai/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer fake-key"
    assert sent.json["messages"] == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Capital of France?"},
    ]
    assert sent.json["stream_options"] == {"include_usage": True}


async def test_older_models_get_max_tokens_and_temperature(adapter, fake_provider):
    request = chat("gpt-4o-mini", max_tokens=3, temperature=0.2)
    events = await collect(adapter(OpenAIProvider).stream(request))

    body = fake_provider.last_request.json
    assert (body["max_tokens"], body["temperature"]) == (3, 0.2)
    assert "max_completion_tokens" not in body
    assert events[-1] == Finish(FinishReason.LENGTH)


async def test_reasoning_models_get_max_completion_tokens_and_no_temperature(
    adapter, fake_provider
):
    # The fake answers 400 to max_tokens or temperature here, as OpenAI does.
    request = chat("gpt-5-mini", max_tokens=50, temperature=0.3)
    events = await collect(adapter(OpenAIProvider).stream(request))

    body = fake_provider.last_request.json
    assert body["max_completion_tokens"] == 50
    assert "max_tokens" not in body and "temperature" not in body
    assert events[-1] == Finish(FinishReason.STOP)


async def test_it_estimates_usage_when_the_vendor_sends_none(adapter):
    events = await collect(adapter(OpenAIProvider).stream(chat("gpt-4o-mini~nousage~tokens=8")))

    usage = events[-2]
    assert isinstance(usage, Usage)
    assert usage.estimated is True
    assert usage.completion_tokens > 0 and usage.prompt_tokens > 0


async def test_bad_key_is_fatal_and_names_the_env_var(adapter):
    _, exc = await failure(adapter(OpenAIProvider).stream(chat("gpt-4o-mini~401")))

    assert (exc.kind, exc.code, exc.status) == (ErrorKind.FATAL, "auth", 401)
    assert exc.message == "OpenAI rejected the key: set OPENAI_API_KEY."
    assert exc.vendor_message.startswith("Incorrect API key provided")


async def test_unknown_model_is_fatal(adapter):
    _, exc = await failure(adapter(OpenAIProvider).stream(chat("gpt-9~404")))

    assert (exc.kind, exc.code) == (ErrorKind.FATAL, "unknown_model")
    assert exc.message == "OpenAI has no model 'gpt-9~404' (or the key cannot use it)."
    assert "does not exist" in exc.vendor_message


async def test_rate_limit_reads_retry_after(adapter, fake_provider):
    fake_provider.script("openai", status=429, retry_after="4")
    _, exc = await failure(adapter(OpenAIProvider).stream(chat("gpt-4o-mini")))

    assert (exc.kind, exc.code, exc.retry_after) == (ErrorKind.RATE_LIMITED, "rate_limited", 4.0)
    assert exc.message == "OpenAI is rate-limiting gpt-4o-mini; retry in 4 s."


async def test_rate_limit_without_a_header_reads_the_message(adapter, fake_provider):
    fake_provider.script("openai", status=429)
    _, exc = await failure(adapter(OpenAIProvider).stream(chat("gpt-4o-mini")))

    assert exc.retry_after == 1.146


async def test_insufficient_quota_is_not_retryable(adapter, fake_provider):
    fake_provider.script("openai", status=429, quota=True)
    _, exc = await failure(adapter(OpenAIProvider).stream(chat("gpt-4o-mini")))

    assert (exc.kind, exc.code, exc.status) == (ErrorKind.FATAL, "quota", 429)


async def test_server_errors_are_retryable(adapter, fake_provider):
    fake_provider.script("openai", status=500)
    fake_provider.script("openai", status=503)
    provider = adapter(OpenAIProvider)

    _, server = await failure(provider.stream(chat("gpt-4o-mini")))
    _, overloaded = await failure(provider.stream(chat("gpt-4o-mini")))

    assert (server.kind, server.code) == (ErrorKind.RETRYABLE, "server_error")
    assert (overloaded.kind, overloaded.code) == (ErrorKind.RETRYABLE, "overloaded")


async def test_an_in_stream_error_fails_the_reply(adapter):
    events, exc = await failure(adapter(OpenAIProvider).stream(chat("gpt-4o-mini~error~tokens=4")))

    assert _text(events) == reply_text(2)
    assert (exc.kind, exc.code) == (ErrorKind.RETRYABLE, "in_stream_error")
    assert "The server had an error" in exc.vendor_message


async def test_a_stream_without_done_is_cut(adapter):
    events, exc = await failure(adapter(OpenAIProvider).stream(chat("gpt-4o-mini~cut~tokens=6")))

    assert _text(events) == reply_text(3)
    assert (exc.kind, exc.code) == (ErrorKind.RETRYABLE, "stream_cut")


async def test_a_dropped_connection_is_a_cut_stream(adapter):
    _, exc = await failure(adapter(OpenAIProvider).stream(chat("gpt-4o-mini~reset")))

    assert exc.code == "stream_cut"


async def test_malformed_json_is_retryable(adapter):
    _, exc = await failure(adapter(OpenAIProvider).stream(chat("gpt-4o-mini~malformed")))

    assert (exc.kind, exc.code) == (ErrorKind.RETRYABLE, "malformed")


async def test_a_silent_server_times_out(adapter, fake_provider):
    fake_provider.script("openai", fault="hang")
    provider = adapter(OpenAIProvider, read_timeout_s=0.2)

    _, exc = await failure(provider.stream(chat("gpt-4o-mini")))

    assert (exc.kind, exc.code) == (ErrorKind.RETRYABLE, "timeout")
    assert await fake_provider.last_request.finished_async()
    assert fake_provider.last_request.client_closed


async def test_a_stall_mid_stream_times_out(adapter):
    provider = adapter(OpenAIProvider, read_timeout_s=0.2)

    events, exc = await failure(provider.stream(chat("gpt-4o-mini~stall~tokens=4")))

    assert _text(events) == reply_text(2)
    assert exc.code == "timeout"


async def test_the_whole_stream_is_bounded(adapter, fake_provider):
    fake_provider.script("openai", tokens=200, pace_ms=10)
    # 200 tokens 10 ms apart take 2 s; the limit cuts them at 0.5 s (long enough that the
    # first tokens arrive before it even on a busy machine).
    provider = adapter(OpenAIProvider, max_stream_s=0.5)

    events, exc = await failure(provider.stream(chat("gpt-4o-mini")))

    assert 0 < len(events) < 200
    assert (exc.kind, exc.code) == (ErrorKind.RETRYABLE, "timeout")
    assert "after 0.5 s" in exc.message


async def test_closing_the_stream_closes_the_upstream_connection(adapter, fake_provider):
    fake_provider.script("openai", tokens=500, pace_ms=5)
    stream = adapter(OpenAIProvider).stream(chat("gpt-4o-mini"))

    async with aclosing(stream):
        first = await anext(stream)
    assert first == TextDelta("Hello")

    request = fake_provider.last_request
    assert await request.finished_async()
    assert request.client_closed is True


async def test_cancelling_the_consumer_closes_the_upstream_connection(adapter, fake_provider):
    fake_provider.script("openai", tokens=500, pace_ms=5)
    started = asyncio.Event()

    async def consume():
        async for _ in adapter(OpenAIProvider).stream(chat("gpt-4o-mini")):
            started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

    request = fake_provider.last_request
    assert await request.finished_async()
    assert request.client_closed is True


async def test_a_normal_stream_is_not_reported_as_closed_early(adapter, fake_provider):
    await collect(adapter(OpenAIProvider).stream(chat("gpt-4o-mini")))

    assert await fake_provider.last_request.finished_async()
    assert fake_provider.last_request.client_closed is False


async def test_an_unreachable_server_is_a_connect_error():
    with socket.socket() as sock:  # a port that was free a moment ago refuses connections
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider = OpenAIProvider(ProviderConfig(api_key="k", base_url=f"http://127.0.0.1:{port}/v1"))
    try:
        _, exc = await failure(provider.stream(chat("gpt-4o-mini")))
    finally:
        await provider.aclose()

    assert (exc.kind, exc.code) == (ErrorKind.RETRYABLE, "connect")
    assert "OPENAI_BASE_URL" in exc.message


async def test_one_pooled_client_serves_every_request(adapter):
    provider = adapter(OpenAIProvider)
    await collect(provider.stream(chat("gpt-4o-mini")))
    client = provider.client
    await collect(provider.stream(chat("gpt-4o-mini")))

    assert provider.client is client


# --- OpenAI-compatible servers ----------------------------------------------------------------


async def test_compat_needs_no_key_and_sends_max_tokens(adapter, fake_provider):
    provider = adapter(OpenAICompatProvider, api_key="")
    events = await collect(provider.stream(chat("llama3.2", max_tokens=4, temperature=0.5)))

    sent = fake_provider.last_request
    assert sent.path == "/compat/v1/chat/completions"
    assert "authorization" not in sent.headers
    assert sent.json["max_tokens"] == 4 and "max_completion_tokens" not in sent.json
    assert _text(events) == reply_text(4)
    assert events[-1] == Finish(FinishReason.LENGTH)
    assert provider.unavailable_reason() == ""


async def test_compat_routes_reasoning_deltas(adapter):
    events = await collect(adapter(OpenAICompatProvider).stream(chat("qwen3~think~tokens=2")))

    reasoning = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    assert reasoning == "Let me think this through."
    assert _text(events) == reply_text(2)


async def test_compat_without_a_base_url_says_which_setting():
    provider = OpenAICompatProvider(ProviderConfig())
    assert "OPENAI_COMPAT_BASE_URL" in provider.unavailable_reason()


async def test_compat_lists_models(adapter):
    models = await adapter(OpenAICompatProvider).list_models()
    assert models == ["llama3.2", "qwen2.5-coder:32b", "gemma3:4b"]


async def test_compat_model_list_errors_are_classified(adapter, fake_provider):
    fake_provider.script("compat", status=500)
    with pytest.raises(ProviderError) as info:
        await adapter(OpenAICompatProvider).list_models()

    assert (info.value.kind, info.value.code) == (ErrorKind.RETRYABLE, "server_error")


async def test_a_body_left_open_after_done_does_not_hold_the_reply(adapter, fake_provider):
    fake_provider.script("openai", tokens=4, fault="linger")
    provider = adapter(OpenAIProvider, read_timeout_s=60)
    # Bounded by END_OF_BODY_WAIT_S (0.2 s), not by the 60 s read timeout.
    events = await asyncio.wait_for(collect(provider.stream(chat("gpt-4o-mini"))), 10)

    assert _text(events) == reply_text(4)
    assert isinstance(events[-1], Finish)
    assert await fake_provider.last_request.finished_async()
    assert fake_provider.last_request.client_closed is True
