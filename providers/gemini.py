"""Google Gemini (Generative Language API) over `streamGenerateContent?alt=sse`.

Each event is a whole GenerateContentResponse; there is no terminator, so the chunk with a
finishReason is the normal end. usageMetadata repeats as running totals.
"""

from __future__ import annotations

import re
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
from .sse import SSEProvider, parse_json
from .turns import alternating

_FINISH = {
    "STOP": FinishReason.STOP,
    "MAX_TOKENS": FinishReason.LENGTH,
    "SAFETY": FinishReason.CONTENT_FILTER,
    "RECITATION": FinishReason.CONTENT_FILTER,
    "BLOCKLIST": FinishReason.CONTENT_FILTER,
    "PROHIBITED_CONTENT": FinishReason.CONTENT_FILTER,
    "SPII": FinishReason.CONTENT_FILTER,
    "IMAGE_SAFETY": FinishReason.CONTENT_FILTER,
}

# 2.5 and later think; asking older models for thoughts is an error.
_THINKING_MODEL = re.compile(r"^gemini-(2\.5|[3-9])|-latest$")


def contents(request: ChatRequest) -> list[dict[str, Any]]:
    """Turns as user/model contents, one per run of a role, starting with the user."""
    return [
        {"role": "model" if t.role == "assistant" else "user", "parts": [{"text": t.content}]}
        for t in alternating(request.turns)
    ]


def gemini_usage(meta: dict[str, Any]) -> Usage:
    # Thoughts are billed as output, so they count as completion tokens too.
    thoughts = int(meta.get("thoughtsTokenCount") or 0)
    return Usage(
        prompt_tokens=int(meta.get("promptTokenCount") or 0),
        completion_tokens=int(meta.get("candidatesTokenCount") or 0) + thoughts,
        reasoning_tokens=thoughts,
    )


def _grounding(candidate: dict[str, Any]) -> tuple[Source, ...]:
    chunks = (candidate.get("groundingMetadata") or {}).get("groundingChunks") or []
    return tuple(
        Source(url=str(web.get("uri") or ""), title=str(web.get("title") or ""))
        for chunk in chunks
        if isinstance(chunk, dict) and isinstance(web := chunk.get("web"), dict)
    )


class GeminiProvider(SSEProvider):
    id = "gemini"
    display_name = "Gemini"

    def headers(self) -> dict[str, str]:
        # The header, not ?key=, keeps the key out of URLs that end up in logs.
        return {"x-goog-api-key": self.config.api_key, "Accept": "text/event-stream"}

    def body(self, request: ChatRequest) -> dict[str, Any]:
        config: dict[str, Any] = {}
        if request.max_tokens is not None:
            config["maxOutputTokens"] = request.max_tokens
        if request.temperature is not None:
            config["temperature"] = request.temperature
        if _THINKING_MODEL.search(request.model):
            config["thinkingConfig"] = {"includeThoughts": True}
        body: dict[str, Any] = {"contents": contents(request)}
        if request.system:
            body["systemInstruction"] = {"parts": [{"text": request.system}]}
        if config:
            body["generationConfig"] = config
        return body

    async def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        model = request.model
        output: list[str] = []
        usage: Usage | None = None
        reason: FinishReason | None = None
        sources: tuple[Source, ...] = ()
        url = f"{self.config.base_url}/models/{model}:streamGenerateContent?alt=sse"
        events = self.events(model, url, headers=self.headers(), body=self.body(request))
        async with aclosing(events):
            async for event in events:
                chunk = parse_json(self, model, event.data)
                if not isinstance(chunk, dict):
                    raise errors.malformed(self, model, event.data)
                if chunk.get("error") or event.event == "error":
                    raise errors.from_stream(self, model, chunk.get("error") or chunk)
                if isinstance(chunk.get("usageMetadata"), dict):
                    usage = gemini_usage(chunk["usageMetadata"])
                candidates = chunk.get("candidates") or []
                block = (chunk.get("promptFeedback") or {}).get("blockReason")
                if block and not candidates:
                    raise errors.blocked(self, model, str(block))
                for candidate in candidates[:1]:
                    for part in (candidate.get("content") or {}).get("parts") or []:
                        text = part.get("text")
                        if not isinstance(text, str) or not text:
                            continue
                        output.append(text)
                        yield ReasoningDelta(text) if part.get("thought") else TextDelta(text)
                    found = _grounding(candidate)
                    if found and found != sources:
                        sources = found
                        yield Sources(found)
                    if candidate.get("finishReason"):
                        reason = _FINISH.get(candidate["finishReason"], FinishReason.STOP)
        if reason is None:
            raise errors.stream_cut(self, model)
        for closing in self.closing_events(request, usage, "".join(output), reason):
            yield closing
