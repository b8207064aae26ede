"""Server-Sent Events for the adapters: the decoder, and the one POST every vendor streams over.

`SSEProvider.events()` holds the rules every adapter shares, so each vendor module only reads
its own JSON: non-2xx is classified before any SSE is read, the whole stream is bounded by
`max_stream_s`, and httpx failures become ProviderErrors with stable codes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, cast

import httpx

from . import errors
from .base import ChatRequest, Finish, FinishReason, Provider, Usage
from .tokens import estimate_prompt_tokens, estimate_tokens


@dataclass(frozen=True, slots=True)
class SSEEvent:
    data: str
    event: str = ""  # "" is the spec's default type, "message"


class SSEDecoder:
    """Feed it lines without their terminators; it returns an event at each blank line.

    Line splitting (\\n, \\r\\n, \\r) is left to httpx, whose decoder also copes with a \\r\\n
    split across two network reads, so Perplexity's and Gemini's \\r\\n\\r\\n framing arrives
    here as ordinary blank lines.
    """

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


async def iter_sse(lines: AsyncIterable[str]) -> AsyncIterator[SSEEvent]:
    """Decode an iterable of lines. An unterminated event at EOF is dropped, as the SSE spec
    says, so a stream cut mid-event reads as a cut rather than as half a JSON document."""
    decoder = SSEDecoder()
    async for line in lines:
        event = decoder.feed(line)
        if event is not None:
            yield event


class SSEProvider(Provider):
    """A Provider whose replies arrive as SSE over one POST."""

    async def events(
        self, model: str, url: str, *, headers: dict[str, str], body: dict[str, Any]
    ) -> AsyncGenerator[SSEEvent]:
        """Yield the SSE events of one POST, raising ProviderError for every failure.

        The response lives inside this generator, so closing it (or cancelling its consumer)
        closes the upstream connection.
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
                decoder = SSEDecoder()
                # httpx's aiter_lines is an async generator, typed more loosely.
                lines = cast(AsyncGenerator[str], response.aiter_lines())
                async with aclosing(lines):
                    while True:
                        # The stream's length is checked after each line, not with a timeout
                        # entered per line (that cost more than parsing the chunk): a silent
                        # upstream is already bounded by the read timeout.
                        try:
                            line = await anext(lines)
                        except StopAsyncIteration:
                            return
                        if loop.time() > deadline:
                            raise errors.too_long(self, model, self.config.max_stream_s)
                        event = decoder.feed(line)
                        if event is not None:
                            yield event
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


def parse_json(provider: Provider, model: str, data: str) -> Any:
    """Parse one data payload; bad JSON is retryable because it is the vendor's glitch."""
    try:
        return json.loads(data)
    except ValueError:
        raise errors.malformed(provider, model, data)
