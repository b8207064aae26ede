"""The fake's Gemini vendor."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from .vendor import JSON_TYPE, ErrorAnswer, Vendor, spaced, sse_data
from .wire import Frame, Reply


class Gemini(Vendor):
    name = "gemini"

    def model(self, path: str, body: dict[str, Any]) -> str:
        tail = path.rsplit("/models/", 1)[-1]
        return unquote(tail.split(":", 1)[0])

    def max_tokens(self, body: dict[str, Any]) -> int | None:
        value = (body.get("generationConfig") or {}).get("maxOutputTokens")
        return int(value) if value else None

    def reject(self, headers: Mapping[str, str], reply: Reply) -> ErrorAnswer | None:
        if not headers.get("x-goog-api-key"):
            return self._error(
                403,
                "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
                "PERMISSION_DENIED",
            )
        return None

    def _error(
        self,
        status: int,
        message: str,
        enum: str,
        details: list[dict[str, Any]] | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> ErrorAnswer:
        error: dict[str, Any] = {"code": status, "message": message, "status": enum}
        if details:
            error["details"] = details
        return status, headers or [], json.dumps({"error": error}, indent=2).encode(), JSON_TYPE

    def error(self, scenario: str, reply: Reply, status: int = 0) -> ErrorAnswer:
        c, m = reply.controls, reply.model
        if scenario == "auth":
            return self._error(
                400,
                "API key not valid. Please pass a valid API key.",
                "INVALID_ARGUMENT",
                [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                        "metadata": {"service": "generativelanguage.googleapis.com"},
                    }
                ],
            )
        if scenario == "forbidden":
            return self._error(
                403, "Permission denied on resource project fake.", "PERMISSION_DENIED"
            )
        if scenario == "unknown_model":
            return self._error(
                404,
                f"models/{m} is not found for API version v1beta, or is not supported for generateContent. Call ListModels to see the list of available models and their supported methods.",
                "NOT_FOUND",
            )
        if scenario == "rate_limit":
            per = "PerDay" if c.daily else "PerMinute"
            delay = c.retry_after if c.retry_after else "19"
            return self._error(
                429,
                f"You exceeded your current quota, please check your plan and billing details. For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits. Please retry in {delay}s.",
                "RESOURCE_EXHAUSTED",
                [
                    {
                        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                        "violations": [
                            {
                                "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                                "quotaId": f"GenerateRequests{per}PerProjectPerModel-FreeTier",
                                "quotaDimensions": {"location": "global", "model": m},
                                "quotaValue": "250" if c.daily else "10",
                            }
                        ],
                    },
                    {
                        "@type": "type.googleapis.com/google.rpc.Help",
                        "links": [
                            {
                                "description": "Learn more about Gemini API quotas",
                                "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                            }
                        ],
                    },
                    {
                        "@type": "type.googleapis.com/google.rpc.RetryInfo",
                        "retryDelay": f"{delay}s",
                    },
                ],
            )
        if scenario == "server_error":
            return self._error(
                500,
                "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
                "INTERNAL",
            )
        if scenario == "overloaded":
            return self._error(
                503, "The model is overloaded. Please try again later.", "UNAVAILABLE"
            )
        if scenario == "timeout":
            return self._error(
                504, "Deadline expired before operation could complete.", "DEADLINE_EXCEEDED"
            )
        return self._error(status or 400, "Fake error requested.", "INVALID_ARGUMENT")

    def _usage(self, reply: Reply, answered: int, thought: int) -> dict[str, Any]:
        usage: dict[str, Any] = {"promptTokenCount": reply.prompt_tokens}
        if answered:
            usage["candidatesTokenCount"] = answered
        usage["totalTokenCount"] = reply.prompt_tokens + answered + thought
        usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": reply.prompt_tokens}]
        if thought:
            usage["thoughtsTokenCount"] = thought
        return usage

    def _chunk(
        self,
        reply: Reply,
        parts: list[dict[str, Any]],
        finish: str | None,
        answered: int,
        thought: int,
    ) -> bytes:
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
        if finish:
            candidate["finishReason"] = finish
        candidate["index"] = 0
        chunk: dict[str, Any] = {"candidates": [candidate]}
        if not reply.controls.no_usage:
            chunk["usageMetadata"] = self._usage(reply, answered, thought)
        chunk["modelVersion"] = reply.model
        chunk["responseId"] = reply.rid
        return sse_data(chunk, b"\r\n\r\n", spaced)

    def frames(self, reply: Reply) -> list[Frame]:
        if reply.controls.blocked:
            chunk = {
                "promptFeedback": {
                    "blockReason": "SAFETY",
                    "safetyRatings": [
                        {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"}
                    ],
                },
                "usageMetadata": {
                    "promptTokenCount": reply.prompt_tokens,
                    "totalTokenCount": reply.prompt_tokens,
                },
                "modelVersion": reply.model,
                "responseId": reply.rid,
            }
            return [Frame(sse_data(chunk, b"\r\n\r\n", spaced))]
        finish = reply.controls.finish or ("MAX_TOKENS" if reply.finish == "length" else "STOP")
        frames: list[Frame] = []
        thoughts = len(reply.thoughts)
        for i, t in enumerate(reply.thoughts):
            part = {"text": t, "thought": True}
            frames.append(Frame(self._chunk(reply, [part], None, 0, i + 1), token=True))
        last = len(reply.answer) - 1
        for i, piece in enumerate(reply.answer):
            # The last chunk carries text and finishReason together, as live streams do.
            frames.append(
                Frame(
                    self._chunk(
                        reply, [{"text": piece}], finish if i == last else None, i + 1, thoughts
                    ),
                    token=True,
                )
            )
        if not reply.answer:
            frames.append(Frame(self._chunk(reply, [{"text": ""}], finish, 0, thoughts)))
        return frames

    def stream_error(self, reply: Reply) -> bytes:
        return sse_data(
            {
                "error": {
                    "code": 500,
                    "message": "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
                    "status": "INTERNAL",
                }
            },
            b"\r\n\r\n",
            spaced,
        )

    def malformed(self, reply: Reply) -> bytes:
        return b'data: {"candidates": [{"content": {"parts": [{"text": "tru\r\n\r\n'
