from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

from providers.sse import SSEDecoder, SSEEvent, iter_sse


async def _decode_bytes(*chunks: bytes) -> list[SSEEvent]:
    """Decode raw network chunks the way adapters do: httpx splits lines, we frame events."""

    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    response = httpx.Response(200, content=body())
    return [event async for event in iter_sse(response.aiter_lines())]


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
