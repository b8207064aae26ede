from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from providers.sse import LineSplitter, SSEDecoder, SSEEvent, iter_sse


async def _decode_bytes(*chunks: bytes) -> list[SSEEvent]:
    """Decode raw network reads the way adapters do."""

    async def reads() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    return [event async for event in iter_sse(reads())]


async def test_it_frames_lf_events():
    events = await _decode_bytes(b'data: {"a":1}\n\ndata: [DONE]\n\n')
    assert events == [SSEEvent('{"a":1}'), SSEEvent("[DONE]")]


async def test_it_frames_crlf_events_split_across_reads():
    events = await _decode_bytes(b"data: one\r", b"\n\r", b"\ndata: two\r\n\r\n")
    assert events == [SSEEvent("one"), SSEEvent("two")]


async def test_it_skips_comments_and_keeps_event_names():
    decoder = SSEDecoder()
    lines = [": OPENROUTER PROCESSING", "", "event: ping", 'data: {"type":"ping"}', ""]
    events = [e for line in lines if (e := decoder.feed(line)) is not None]
    assert events == [SSEEvent('{"type":"ping"}', event="ping")]
    assert decoder.comments == 1


async def test_it_joins_multi_line_data():
    events = await _decode_bytes(b"data: first\ndata:second\n\n")
    assert events == [SSEEvent("first\nsecond")]


async def test_it_drops_an_unterminated_event_at_eof():
    events = await _decode_bytes(b'data: whole\n\ndata: {"half')
    assert events == [SSEEvent("whole")]


async def test_a_lone_cr_ends_a_line_even_at_the_end_of_a_read():
    events = await _decode_bytes(b"data: one\r", b"\rdata: two\r\r")
    assert events == [SSEEvent("one"), SSEEvent("two")]


async def test_a_multibyte_character_split_across_reads_is_whole():
    text = "Grüße, 世界".encode()
    events = await _decode_bytes(b"data: " + text[:3], text[3:9], text[9:] + b"\n\n")
    assert events == [SSEEvent("Grüße, 世界")]


@pytest.mark.parametrize("size", [1, 2, 3, 7])
async def test_any_split_of_the_bytes_gives_the_same_events(size):
    body = b'event: a\r\ndata: {"x":1}\r\n\r\n: ping\n\ndata: two\ndata: lines\n\n'
    chunks = [body[i : i + size] for i in range(0, len(body), size)]
    assert await _decode_bytes(*chunks) == [
        SSEEvent('{"x":1}', event="a"),
        SSEEvent("two\nlines"),
    ]


def test_the_splitter_holds_an_unfinished_line():
    splitter = LineSplitter()
    assert splitter.feed(b"data: par") == []
    assert splitter.feed(b"tial\nnext") == ["data: partial"]
    assert splitter.close() == []


async def test_before_read_can_end_the_stream():
    def stop() -> None:
        raise RuntimeError("too long")

    async def reads() -> AsyncIterator[bytes]:
        yield b"data: x\n\n"

    with pytest.raises(RuntimeError, match="too long"):
        [event async for event in iter_sse(reads(), stop)]


@pytest.mark.parametrize(
    ("provider_class", "model"),
    [
        ("providers.openai.OpenAIProvider", "gpt-4o-mini"),  # ends with [DONE]
        ("providers.openrouter.OpenRouterProvider", "openai/gpt-4o-mini"),
        ("providers.anthropic.AnthropicProvider", "claude-haiku-4-5"),  # message_stop
        ("providers.perplexity.PerplexityProvider", "sonar"),  # the body's end
        ("providers.gemini.GeminiProvider", "gemini-2.0-flash"),  # the body's end
    ],
)
async def test_replies_one_after_another_share_one_connection(
    adapter, fake_provider, provider_class, model
):
    """Every adapter reads a reply's body to its end, so the connection goes back to the
    pool: no new TCP (and, with a real vendor, TLS) handshake for every reply."""
    from django.utils.module_loading import import_string

    from tests.fake_server import chat, collect

    provider = adapter(import_string(provider_class))
    await collect(provider.stream(chat(model)))
    await collect(provider.stream(chat(model)))

    first, second = fake_provider.requests
    assert await second.finished_async()
    assert first.connection == second.connection
    assert not first.client_closed and not second.client_closed
