"""Perplexity Sonar: OpenAI-like chunks with Perplexity's own rules.

Events end with \\r\\n\\r\\n and there is no [DONE]: EOF after the chunk carrying a
finish_reason is the normal end. Usage arrives as running totals in every chunk (the last one
adds the cost), citations and search results repeat in every chunk, and reasoning models
stream `<think>...</think>` inline in the content.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from . import errors
from .base import (
    ChatRequest,
    Event,
    FinishReason,
    ReasoningDelta,
    Source,
    Sources,
    TextDelta,
    Usage,
)
from .openai import OpenAIProvider, error_payload, finish_reason, is_done, openai_usage
from .sse import parse_json
from .turns import alternating


def alternating_messages(request: ChatRequest) -> list[dict[str, str]]:
    """System first, then strictly alternating turns, or Perplexity answers 400."""
    merged = [{"role": t.role, "content": t.content} for t in alternating(request.turns)]
    system = [{"role": "system", "content": request.system}] if request.system else []
    return system + merged


def _partial_tag(text: str, tag: str) -> int:
    """Length of the longest end of `text` that could be the start of `tag`."""
    for size in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


class ThinkSplitter:
    """Routes `<think>...</think>` in streamed content to reasoning, tags split or not.

    It holds back only what might be the start of a tag (and, inside a thought, trailing
    whitespace that might precede the closing tag), so the answer still streams promptly.
    """

    OPEN = "<think>"
    CLOSE = "</think>"

    def __init__(self) -> None:
        self._buf = ""
        self._inside = False
        self._trim = False  # drop the newlines vendors put just inside and after the tags

    def feed(self, text: str) -> list[TextDelta | ReasoningDelta]:
        self._buf += text
        out: list[TextDelta | ReasoningDelta] = []
        while True:
            tag = self.CLOSE if self._inside else self.OPEN
            at = self._buf.find(tag)
            if at >= 0:
                before, self._buf = self._buf[:at], self._buf[at + len(tag) :]
                self._emit(out, before.rstrip() if self._inside else before)
                self._inside = not self._inside
                self._trim = True
                continue
            ready = self._buf[: len(self._buf) - _partial_tag(self._buf, tag)]
            if self._inside:
                ready = ready.rstrip()
            self._buf = self._buf[len(ready) :]
            self._emit(out, ready)
            return out

    def flush(self) -> list[TextDelta | ReasoningDelta]:
        out: list[TextDelta | ReasoningDelta] = []
        self._emit(out, self._buf)
        self._buf = ""
        return out

    def _emit(self, out: list[TextDelta | ReasoningDelta], text: str) -> None:
        if self._trim:
            text = text.lstrip()
            self._trim = not text
        if text:
            out.append(ReasoningDelta(text) if self._inside else TextDelta(text))


def sources_of(chunk: dict[str, Any]) -> tuple[Source, ...]:
    """search_results when present (they carry titles and dates), else bare citations."""
    results = chunk.get("search_results")
    if isinstance(results, list) and results:
        return tuple(
            Source(
                url=str(r.get("url") or ""),
                title=str(r.get("title") or ""),
                date=str(r.get("date") or ""),
            )
            for r in results
            if isinstance(r, dict)
        )
    citations = chunk.get("citations")
    if isinstance(citations, list):
        return tuple(Source(url=str(url)) for url in citations if url)
    return ()


class PerplexityProvider(OpenAIProvider):
    id = "perplexity"
    display_name = "Perplexity"
    # Usage comes in every chunk unasked, so no stream_options; its sonar models take the
    # plain max_tokens/temperature dialect that OpenAIProvider.sampling gives them.
    asks_for_usage = False

    def messages(self, request: ChatRequest) -> list[dict[str, str]]:
        return alternating_messages(request)

    async def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        model = request.model
        splitter = ThinkSplitter()
        output: list[str] = []
        usage: Usage | None = None
        reason: FinishReason | None = None
        sources: tuple[Source, ...] = ()
        url = f"{self.config.base_url}/chat/completions"
        events = self.events(
            model, url, headers=self.headers(), body=self.body(request), last=is_done
        )
        async with aclosing(events):
            async for event in events:
                if is_done(event):
                    continue  # not sent today; if it ever is, `events` stops after it
                if event.event == "error":
                    raise errors.from_stream(self, model, error_payload(event.data))
                chunk = parse_json(self, model, event.data)
                if not isinstance(chunk, dict):
                    raise errors.malformed(self, model, event.data)
                if chunk.get("error"):
                    raise errors.from_stream(self, model, chunk["error"])
                if isinstance(chunk.get("usage"), dict):
                    usage = openai_usage(chunk["usage"])  # running totals: the last wins
                found = sources_of(chunk)
                if found and found != sources:
                    sources = found
                    yield Sources(found)
                for choice in (chunk.get("choices") or [])[:1]:
                    content = (choice.get("delta") or {}).get("content")
                    if isinstance(content, str) and content:
                        for piece in splitter.feed(content):
                            output.append(piece.text)
                            yield piece
                    if choice.get("finish_reason") == "error":
                        raise errors.from_stream(self, model, "the reply ended with an error")
                    if choice.get("finish_reason"):
                        reason = finish_reason(choice["finish_reason"])
        if reason is None:
            raise errors.stream_cut(self, model)
        for piece in splitter.flush():
            output.append(piece.text)
            yield piece
        for closing in self.closing_events(request, usage, "".join(output), reason):
            yield closing
