"""OpenAI Chat Completions streaming, and the same wire spoken by local OpenAI-compatible
servers (Ollama, vLLM, llama.cpp). OpenRouter and Perplexity build on these pieces."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import aclosing
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx

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

_FINISH = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "content_filter": FinishReason.CONTENT_FILTER,
    "tool_calls": FinishReason.STOP,
    "function_call": FinishReason.STOP,
}

# o1, o3-mini, o4-mini, gpt-5, gpt-5.1-...: they reject max_tokens and a non-default temperature.
_REASONING_MODEL = re.compile(r"^(o\d|gpt-5)")


def finish_reason(value: str) -> FinishReason:
    return _FINISH.get(value, FinishReason.STOP)


def _cost(value: Any) -> Decimal | None:
    # OpenRouter sends a number, Perplexity an object whose total_cost is the bill.
    if isinstance(value, dict):
        value = value.get("total_cost")
    if value is None or isinstance(value, bool):
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def openai_usage(usage: dict[str, Any]) -> Usage:
    details = usage.get("completion_tokens_details") or {}
    reasoning = details.get("reasoning_tokens") or usage.get("reasoning_tokens") or 0
    return Usage(
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        reasoning_tokens=int(reasoning),
        vendor_cost_usd=_cost(usage.get("cost")),
    )


def error_payload(data: str) -> Any:
    """The body of an `event: error`, which may not even be JSON."""
    try:
        return json.loads(data)
    except ValueError:
        return data


class OpenAIProvider(SSEProvider):
    id = "openai"
    display_name = "OpenAI"
    asks_for_usage = True  # stream_options.include_usage

    def headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        return headers

    def messages(self, request: ChatRequest) -> list[dict[str, str]]:
        messages = [{"role": "system", "content": request.system}] if request.system else []
        messages += [{"role": t.role, "content": t.content} for t in request.turns]
        return messages

    def sampling(self, request: ChatRequest) -> dict[str, Any]:
        """Length and temperature, in the dialect this server accepts."""
        params: dict[str, Any] = {}
        if _REASONING_MODEL.match(request.model):
            # Reasoning families answer 400 to max_tokens and to any non-default temperature.
            if request.max_tokens is not None:
                params["max_completion_tokens"] = request.max_tokens
            return params
        if request.max_tokens is not None:
            params["max_tokens"] = request.max_tokens
        if request.temperature is not None:
            params["temperature"] = request.temperature
        return params

    def body(self, request: ChatRequest) -> dict[str, Any]:
        body = {
            "model": request.model,
            "messages": self.messages(request),
            **self.sampling(request),
            "stream": True,
        }
        if self.asks_for_usage:
            # Without this the stream carries no usage at all.
            body["stream_options"] = {"include_usage": True}
        return body

    async def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        model = request.model
        output: list[str] = []
        usage: Usage | None = None
        reason = FinishReason.STOP
        done = False
        url = f"{self.config.base_url}/chat/completions"
        events = self.events(
            model, url, headers=self.headers(), body=self.body(request), last=is_done
        )
        async with aclosing(events):
            async for event in events:
                if is_done(event):
                    done = True
                    continue  # the last event: `events` reads the body's end, then stops
                if event.event == "error":
                    raise errors.from_stream(self, model, error_payload(event.data))
                chunk = parse_json(self, model, event.data)
                if not isinstance(chunk, dict):
                    raise errors.malformed(self, model, event.data)
                if chunk.get("error"):
                    raise errors.from_stream(self, model, chunk["error"])
                if isinstance(chunk.get("usage"), dict):
                    usage = openai_usage(chunk["usage"])
                # vLLM's usage-only chunk may have "choices": null.
                for choice in (chunk.get("choices") or [])[:1]:
                    delta = choice.get("delta") or {}
                    # Ollama, vLLM and OpenRouter put thinking beside the content.
                    thought = delta.get("reasoning") or delta.get("reasoning_content")
                    if isinstance(thought, str) and thought:
                        output.append(thought)
                        yield ReasoningDelta(thought)
                    content = delta.get("content")
                    if isinstance(content, str) and content:
                        output.append(content)
                        yield TextDelta(content)
                    if choice.get("finish_reason") == "error":
                        raise errors.from_stream(self, model, "the reply ended with an error")
                    if choice.get("finish_reason"):
                        # OpenRouter repeats it on its usage chunk; the value is the same.
                        reason = finish_reason(choice["finish_reason"])
        if not done:
            raise errors.stream_cut(self, model)
        for closing in self.closing_events(request, usage, "".join(output), reason):
            yield closing


def is_done(event: SSEEvent) -> bool:
    """The OpenAI wire's last event, `data: [DONE]`."""
    return event.data.startswith("[DONE]")


class OpenAICompatProvider(OpenAIProvider):
    """Any server speaking the OpenAI wire: no key needed, only a base URL."""

    id = "openai_compat"
    display_name = "OpenAI-compatible server"
    needs_key = False

    def unavailable_reason(self) -> str:
        if not self.config.base_url:
            return f"The {self.display_name} has no address: set OPENAI_COMPAT_BASE_URL."
        return ""

    def sampling(self, request: ChatRequest) -> dict[str, Any]:
        # Local servers all take max_tokens, whatever the model is called.
        params: dict[str, Any] = {}
        if request.max_tokens is not None:
            params["max_tokens"] = request.max_tokens
        if request.temperature is not None:
            params["temperature"] = request.temperature
        return params

    async def list_models(self) -> list[str]:
        """Model ids the server offers, in its order (`GET /models`)."""
        url = f"{self.config.base_url}/models"
        try:
            response = await self.client.get(url, headers=self.headers())
        except httpx.TimeoutException:
            raise errors.timed_out(self, "", self.config.read_timeout_s)
        except httpx.TransportError as exc:
            raise errors.connect_failed(self, "", exc)
        if not 200 <= response.status_code < 300:
            raise errors.from_http(
                self, "", response.status_code, response.headers, response.content
            )
        try:
            data = response.json().get("data") or []
        except (ValueError, AttributeError):
            raise errors.malformed(self, "", response.text)
        return [m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]
