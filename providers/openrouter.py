"""OpenRouter: OpenAI's wire plus keep-alive comments, an accounting frame and a cost.

The decoder already skips `: OPENROUTER PROCESSING` comments. The usage chunk repeats the
finish_reason on one choice; the shared loop treats that as accounting, not a second end.
A mid-stream failure is a chunk with a top-level `error` and finish_reason "error".
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from .base import ChatRequest
from .openai import OpenAIProvider


class OpenRouterProvider(OpenAIProvider):
    id = "openrouter"
    display_name = "OpenRouter"

    def headers(self) -> dict[str, str]:
        headers = super().headers()
        # Attribution: OpenRouter credits the app named by these on its rankings.
        headers["HTTP-Referer"] = getattr(settings, "SITE_URL", "") or "http://127.0.0.1:8000"
        headers["X-OpenRouter-Title"] = "Chat"
        return headers

    def sampling(self, request: ChatRequest) -> dict[str, Any]:
        # OpenRouter normalises max_tokens for every upstream, reasoning models included.
        params: dict[str, Any] = {}
        if request.max_tokens is not None:
            params["max_tokens"] = request.max_tokens
        if request.temperature is not None:
            params["temperature"] = request.temperature
        return params
