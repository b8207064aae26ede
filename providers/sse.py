"""Server-Sent Events for the adapters: the decoder, and the one POST every vendor streams over.

`SSEProvider.events()` holds the rules every adapter shares, so each vendor module only reads
its own JSON: non-2xx is classified before any SSE is read, the whole stream is bounded by
`max_stream_s`, and httpx failures become ProviderErrors with stable codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, cast

import httpx

from . import errors
from .base import ChatRequest, Finish, FinishReason, Provider, ProviderError, Usage
from .tokens import estimate_prompt_tokens, estimate_tokens


@dataclass(frozen=True, slots=True)
class SSEEvent:
    data: str
    event: str = ""  # "" is the spec's default type, "message"


class LineSplitter:
    """Network reads to lines without their terminators (\\n, \\r\\n or \\r), across reads.

    A read that ends in \\r holds it back until the next one, so a \\r\\n split across two reads
    is one line end, not two, and Perplexity's and Gemini's \\r\\n\\r\\n framing reaches the
    decoder as ordinary blank lines. Working on bytes, a read at a time, costs far less than
    httpx's text and line decoders stacked on its byte iterator.
    """

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, chunk: bytes) -> list[str]:
        data = self._rest + chunk if self._rest else chunk
        held = b""
        if data.endswith(b"\r"):
            data, held = data[:-1], b"\r"
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *lines, rest = data.split(b"\n")
        self._rest = rest + held
        return [line.decode("utf-8", "replace") for line in lines]

    def close(self) -> list[str]:
        """The last line, if the stream's last byte ended it with a lone \\r."""
        rest, self._rest = self._rest, b""
        return [rest[:-1].decode("utf-8", "replace")] if rest.endswith(b"\r") else []


class SSEDecoder:
    """Feed it lines without their terminators; it returns an event at each blank line."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self.comments = 0  # keep-alives (`: OPENROUTER PROCESSING`), counted for tests

    def feed(self, line: str) -> SSEEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            self.comments += 1
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        # `id:` and `retry:` only matter for EventSource reconnection, which no vendor offers.
        return None

    def _dispatch(self) -> SSEEvent | None:
        event, data = self._event, self._data
        self._event, self._data = "", []
        if not data:
            return None
        return SSEEvent(data="\n".join(data), event=event)


async def iter_sse(
    chunks: AsyncIterable[bytes], before_read: Callable[[], None] | None = None
) -> AsyncGenerator[SSEEvent]:
    """Decode network reads. An unterminated event at EOF is dropped, as the SSE spec says,
    so a stream cut mid-event reads as a cut rather than as half a JSON document.
    `before_read` runs before each read is decoded (and may raise to end the stream)."""
    splitter, decoder = LineSplitter(), SSEDecoder()
    async for chunk in chunks:
        if before_read is not None:
            before_read()
        for line in splitter.feed(chunk):
            if (event := decoder.feed(line)) is not None:
                yield event
    for line in splitter.close():
        if (event := decoder.feed(line)) is not None:
            yield event


# How long a stream's end may take to arrive after its last event (see SSEProvider.events).
END_OF_BODY_WAIT_S = 0.2


class SSEProvider(Provider):
    """A Provider whose replies arrive as SSE over one POST."""

    async def events(
        self,
        model: str,
        url: str,
        *,
        headers: dict[str, str],
        body: dict[str, Any],
        last: Callable[[SSEEvent], bool] | None = None,
    ) -> AsyncGenerator[SSEEvent]:
        """Yield the SSE events of one POST, raising ProviderError for every failure.

        The response lives inside this generator, so closing it (or cancelling its consumer)
        closes the upstream connection. `last` names the vendor's final event (`[DONE]`):
        after it the generator reads the body to its end (at most END_OF_BODY_WAIT_S) and
        stops, so the connection goes back to the pool for the next reply. A consumer that
        broke off at that event instead would close the response mid-body, and with it the
        connection: a new TCP (and TLS) handshake for every reply.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.max_stream_s
        started = False  # once the body flows, a dropped connection is a cut stream
        try:
            async with self.client.stream("POST", url, headers=headers, json=body) as response:
                if not 200 <= response.status_code < 300:
                    raw = await response.aread()
                    raise errors.from_http(self, model, response.status_code, response.headers, raw)
                started = True
                # Raw reads when the body is not compressed (vendors don't compress SSE):
                # httpx's decoder layers would only copy each read.
                raw = response.headers.get("content-encoding", "identity") == "identity"
                chunks = response.aiter_raw() if raw else response.aiter_bytes()

                def check_length() -> None:
                    # The stream's length is checked per read, not with a timeout entered per
                    # read (that cost more than parsing the chunk): a silent upstream is
                    # already bounded by the read timeout.
                    if loop.time() > deadline:
                        raise errors.too_long(self, model, self.config.max_stream_s)

                reads = cast(AsyncGenerator[bytes], chunks)
                async with aclosing(reads), aclosing(iter_sse(reads, check_length)) as events:
                    async for event in events:
                        yield event
                        if last is not None and last(event):
                            await _read_to_end(events)
                            return
        except httpx.ConnectTimeout:
            raise errors.timed_out(self, model, self.config.connect_timeout_s, connecting=True)
        except httpx.TimeoutException:
            raise errors.timed_out(self, model, self.config.read_timeout_s)
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            if started:
                raise errors.stream_cut(self, model)
            raise errors.connect_failed(self, model, exc)
        except httpx.TransportError as exc:
            raise errors.connect_failed(self, model, exc)

    def closing_events(
        self,
        request: ChatRequest,
        usage: Usage | None,
        output: str,
        reason: FinishReason,
    ) -> tuple[Usage, Finish]:
        """The last two events of every reply: real usage if the vendor sent any, else an
        estimate from the text we saw, flagged so cost reports can tell."""
        if usage is None:
            usage = Usage(
                prompt_tokens=estimate_prompt_tokens(request.system, request.turns),
                completion_tokens=estimate_tokens(output),
                estimated=True,
            )
        return usage, Finish(reason)


async def _read_to_end(events: AsyncIterator[SSEEvent]) -> None:
    """Read what follows the last event (the body's end), ignoring it; give up after
    END_OF_BODY_WAIT_S, when closing the response closes the connection instead."""
    with contextlib.suppress(TimeoutError, httpx.HTTPError, ProviderError):
        async with asyncio.timeout(END_OF_BODY_WAIT_S):
            async for _ in events:
                pass


def parse_json(provider: Provider, model: str, data: str) -> Any:
    """Parse one data payload; bad JSON is retryable because it is the vendor's glitch."""
    try:
        return json.loads(data)
    except ValueError:
        raise errors.malformed(provider, model, data)
