"""Anthropic Messages streaming: named events from message_start to message_stop.

output_tokens in message_delta is cumulative, so the last value is the total. ping and
event types we do not know are ignored, as Anthropic asks.
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
    TextDelta,
    Usage,
)
from .sse import SSEEvent, SSEProvider, parse_json
from .turns import alternating

API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024  # the API insists on a cap

_FINISH = {
    "end_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "tool_use": FinishReason.STOP,
    "pause_turn": FinishReason.STOP,
    "max_tokens": FinishReason.LENGTH,
    "refusal": FinishReason.CONTENT_FILTER,
}


def anthropic_messages(request: ChatRequest) -> list[dict[str, str]]:
    """One message per run of a role, starting with the user, as the API requires."""
    return [{"role": t.role, "content": t.content} for t in alternating(request.turns)]


def _input_tokens(usage: dict[str, Any]) -> int:
    # Cached prompt tokens are still prompt tokens, billed at their own rates.
    return sum(
        int(usage.get(k) or 0)
        for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    )


def _is_stop(event: SSEEvent) -> bool:
    """The last event of a reply, `event: message_stop`."""
    return event.event == "message_stop"


class AnthropicProvider(SSEProvider):
    id = "anthropic"
    display_name = "Anthropic"

    def headers(self) -> dict[str, str]:
        return {
            "x-api-key": self.config.api_key,
            "anthropic-version": API_VERSION,
            "Accept": "text/event-stream",
        }

    def body(self, request: ChatRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
            "messages": anthropic_messages(request),
            "stream": True,
        }
        if request.system:
            body["system"] = request.system
        if request.temperature is not None:
            body["temperature"] = request.temperature
        return body

    async def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        model = request.model
        output: list[str] = []
        prompt_tokens: int | None = None
        completion_tokens: int | None = None
        reason = FinishReason.STOP
        done = False
        url = f"{self.config.base_url}/messages"
        events = self.events(
            model, url, headers=self.headers(), body=self.body(request), last=_is_stop
        )
        async with aclosing(events):
            async for event in events:
                data = parse_json(self, model, event.data)
                if not isinstance(data, dict):
                    raise errors.malformed(self, model, event.data)
                kind = event.event or str(data.get("type") or "")
                if kind == "error" or data.get("type") == "error":
                    raise errors.from_stream(self, model, data.get("error") or data)
                if kind == "message_start":
                    usage = (data.get("message") or {}).get("usage") or {}
                    if usage:
                        prompt_tokens = _input_tokens(usage)
                        completion_tokens = int(usage.get("output_tokens") or 0)
                elif kind == "content_block_delta":
                    delta = data.get("delta") or {}
                    if delta.get("type") == "text_delta" and delta.get("text"):
                        output.append(delta["text"])
                        yield TextDelta(delta["text"])
                    elif delta.get("type") == "thinking_delta" and delta.get("thinking"):
                        output.append(delta["thinking"])
                        yield ReasoningDelta(delta["thinking"])
                elif kind == "message_delta":
                    stop = (data.get("delta") or {}).get("stop_reason")
                    if stop:
                        reason = _FINISH.get(stop, FinishReason.STOP)
                    usage = data.get("usage") or {}
                    if "output_tokens" in usage:
                        completion_tokens = int(usage["output_tokens"] or 0)  # cumulative
                    if usage.get("input_tokens") is not None:
                        prompt_tokens = _input_tokens(usage)
                elif kind == "message_stop":
                    done = True
                    if not _is_stop(event):
                        break  # named only in its data: `events` does not know it is the last
        if not done:
            raise errors.stream_cut(self, model)
        usage_event = None
        if prompt_tokens is not None and completion_tokens is not None:
            usage_event = Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        for closing in self.closing_events(request, usage_event, "".join(output), reason):
            yield closing
