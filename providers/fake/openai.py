"""The fake's OpenAI, Ollama-style compat and OpenRouter vendors."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from .vendor import JSON_TYPE, ErrorAnswer, Vendor, compact, retry_header, retry_seconds, sse_data
from .wire import Frame, Reply


class OpenAI(Vendor):
    name = "openai"

    def reject(self, headers: Mapping[str, str], reply: Reply) -> ErrorAnswer | None:
        refused = super().reject(headers, reply)
        if refused or not reply.model.startswith(("o1", "o3", "o4", "gpt-5")):
            return refused
        # Quoted from live 400s of reasoning models.
        if "max_tokens" in reply.body:
            return self._error(
                400,
                "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.",
                "invalid_request_error",
                "unsupported_parameter",
                param="max_tokens",
            )
        temperature = reply.body.get("temperature")
        if temperature is not None and temperature != 1:
            return self._error(
                400,
                f"Unsupported value: 'temperature' does not support {temperature} with this model. Only the default (1) value is supported.",
                "invalid_request_error",
                "unsupported_value",
                param="temperature",
            )
        return None

    def _error(
        self,
        status: int,
        message: str,
        type_: str,
        code: str | None,
        param: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> ErrorAnswer:
        body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
        return status, headers or [], json.dumps(body, indent=4).encode(), JSON_TYPE

    def error(self, scenario: str, reply: Reply, status: int = 0) -> ErrorAnswer:
        c, m = reply.controls, reply.model
        if scenario == "auth":
            return self._error(
                401,
                "Incorrect API key provided: sk-fake***. You can find your API key at https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                "invalid_api_key",
            )
        if scenario in ("credits", "quota") or (scenario == "rate_limit" and c.quota):
            return self._error(
                429,
                "You exceeded your current quota, please check your plan and billing details. For more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
                "insufficient_quota",
                "insufficient_quota",
            )
        if scenario == "forbidden":
            return self._error(
                403,
                "Country, region, or territory not supported",
                "request_forbidden",
                "unsupported_country_region_territory",
            )
        if scenario == "unknown_model":
            return self._error(
                404,
                f"The model `{m}` does not exist or you do not have access to it.",
                "invalid_request_error",
                "model_not_found",
            )
        if scenario == "rate_limit":
            wait = f"{retry_seconds(c, 1.146):g}s"
            return self._error(
                429,
                f"Rate limit reached for {m} in organization org-fake on tokens per min (TPM): Limit 200000, Used 199500, Requested 1200. Please try again in {wait}. Visit https://platform.openai.com/account/rate-limits to learn more.",
                "tokens",
                "rate_limit_exceeded",
                headers=retry_header(c),
            )
        if scenario == "server_error":
            return self._error(
                500,
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
                None,
            )
        if scenario == "overloaded":
            return self._error(
                503,
                "The engine is currently overloaded, please try again later.",
                "server_error",
                None,
                headers=retry_header(c),
            )
        return self._error(status or 400, "Fake error requested.", "invalid_request_error", None)

    def _envelope(self, reply: Reply) -> dict[str, Any]:
        """The fields every chunk of a reply starts with, in OpenAI's order."""
        return {
            "id": f"chatcmpl-{reply.rid}",
            "object": "chat.completion.chunk",
            "created": reply.created,
            "model": reply.model,
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
        }

    def _chunk(self, reply: Reply, delta: dict[str, Any], finish: str | None = None) -> bytes:
        chunk: dict[str, Any] = {
            **self._envelope(reply),
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if self._wants_usage(reply):
            chunk["usage"] = None
        return sse_data(chunk)

    def _wants_usage(self, reply: Reply) -> bool:
        options = reply.body.get("stream_options") or {}
        return bool(options.get("include_usage")) and not reply.controls.no_usage

    def _usage(self, reply: Reply) -> dict[str, Any]:
        return {
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": reply.reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def frames(self, reply: Reply) -> list[Frame]:
        # o-series think without showing it: only the usage counts the thoughts.
        frames = [Frame(self._chunk(reply, {"role": "assistant", "content": "", "refusal": None}))]
        frames += [Frame(self._chunk(reply, {"content": p}), token=True) for p in reply.answer]
        frames.append(Frame(self._chunk(reply, {}, reply.controls.finish or reply.finish)))
        if self._wants_usage(reply):
            usage_chunk = {**self._envelope(reply), "choices": [], "usage": self._usage(reply)}
            frames.append(Frame(sse_data(usage_chunk)))
        frames.append(Frame(b"data: [DONE]\n\n"))
        return frames

    def stream_error(self, reply: Reply) -> bytes:
        return sse_data(
            {
                "error": {
                    "message": "The server had an error while processing your request. Sorry about that!",
                    "type": "server_error",
                }
            }
        )


class Compat(OpenAI):
    """Ollama's flavour: role in every delta, thinking in delta.reasoning, no key needed."""

    name = "compat"

    def reject(self, headers: Mapping[str, str], reply: Reply) -> ErrorAnswer | None:
        return None

    def error(self, scenario: str, reply: Reply, status: int = 0) -> ErrorAnswer:
        if scenario == "unknown_model":
            return self._error(
                404, f'model "{reply.model}" not found, try pulling it first', "api_error", None
            )
        return super().error(scenario, reply, status)

    def _compat_chunk(self, reply: Reply, delta: dict[str, Any], finish: str | None) -> bytes:
        return sse_data(
            {
                "id": f"chatcmpl-{reply.rid[:3]}",
                "object": "chat.completion.chunk",
                "created": reply.created,
                "model": reply.model,
                "system_fingerprint": "fp_ollama",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
        )

    def frames(self, reply: Reply) -> list[Frame]:
        role = {"role": "assistant", "content": ""}
        frames = [
            Frame(self._compat_chunk(reply, {**role, "reasoning": t}, None), token=True)
            for t in reply.thoughts
        ]
        frames += [
            Frame(self._compat_chunk(reply, {**role, "content": p}, None), token=True)
            for p in reply.answer
        ]
        frames.append(Frame(self._compat_chunk(reply, role, reply.controls.finish or reply.finish)))
        if self._wants_usage(reply):
            usage = {k: v for k, v in self._usage(reply).items() if not k.endswith("details")}
            chunk = {
                "id": f"chatcmpl-{reply.rid[:3]}",
                "object": "chat.completion.chunk",
                "created": reply.created,
                "model": reply.model,
                "system_fingerprint": "fp_ollama",
                "choices": [],
                "usage": usage,
            }
            frames.append(Frame(sse_data(chunk)))
        frames.append(Frame(b"data: [DONE]\n\n"))
        return frames


class OpenRouter(OpenAI):
    name = "openrouter"
    KEEPALIVE = b": OPENROUTER PROCESSING\n\n"

    def _or_error(
        self,
        status: int,
        message: str,
        metadata: dict[str, Any] | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> ErrorAnswer:
        error: dict[str, Any] = {"message": message, "code": status}
        if metadata is not None:
            error["metadata"] = metadata
        return status, headers or [], compact({"error": error}), JSON_TYPE

    def error(self, scenario: str, reply: Reply, status: int = 0) -> ErrorAnswer:
        c, m = reply.controls, reply.model
        if scenario == "auth":
            return self._or_error(401, "No auth credentials found")
        if scenario in ("credits", "quota"):
            return self._or_error(
                402,
                "Insufficient credits. This account never purchased credits. Make sure your key is on the correct account or org, and if so, purchase more at https://openrouter.ai/settings/credits",
            )
        if scenario == "forbidden":
            return self._or_error(
                403,
                f'{m} requires moderation on OpenAI. Your input was flagged for "violence".',
                {
                    "reasons": ["violence"],
                    "flagged_input": "...",
                    "provider_name": "OpenAI",
                    "model_slug": m,
                },
            )
        if scenario == "unknown_model":
            return self._or_error(400, f"{m} is not a valid model ID")
        if scenario == "rate_limit":
            reset_ms = int((time.time() + retry_seconds(c, 60)) * 1000)
            if c.daily:
                message = "Rate limit exceeded: free-models-per-day. Add 10 credits to unlock 1000 free model requests per day"
                limit = "50"
            else:
                message = "Rate limit exceeded: free-models-per-min."
                limit = "20"
            headers = {
                "X-RateLimit-Limit": limit,
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": str(reset_ms),
            }
            return self._or_error(429, message, {"headers": headers, "provider_name": None})
        if scenario == "bad_gateway":
            return self._or_error(
                502,
                "Provider returned error",
                {"provider_name": "OpenAI", "raw": '{"error":{"message":"upstream failure"}}'},
            )
        if scenario == "server_error":
            return self._or_error(500, "Internal Server Error")
        if scenario == "overloaded":
            return self._or_error(
                503, "No endpoints found that can handle the requested parameters."
            )
        return self._or_error(status or 400, "Fake error requested.")

    def stream_headers(self, reply: Reply) -> list[tuple[str, str]]:
        return [("X-Generation-Id", f"gen-{reply.created}-{reply.rid[:20]}")]

    def _or_chunk(
        self, reply: Reply, delta: dict[str, Any], finish: str | None, **extra: Any
    ) -> bytes:
        return sse_data(
            {
                "id": f"gen-{reply.created}-{reply.rid[:20]}",
                "provider": "OpenAI",
                "model": reply.model,
                "object": "chat.completion.chunk",
                "created": reply.created,
                "choices": [
                    {
                        "index": 0,
                        "delta": delta,
                        "finish_reason": finish,
                        "native_finish_reason": finish,
                        "logprobs": None,
                    }
                ],
                **extra,
            }
        )

    def frames(self, reply: Reply) -> list[Frame]:
        role = {"role": "assistant", "content": ""}
        frames = [Frame(self.KEEPALIVE, keepalive=True) for _ in range(3)]
        pieces = [({**role, "reasoning": t}) for t in reply.thoughts]
        pieces += [{"role": "assistant", "content": p} for p in reply.answer]
        for i, delta in enumerate(pieces):
            frames.append(Frame(self._or_chunk(reply, delta, None), token=True))
            if i % 3 == 2:  # keep-alives between events too, as the capture shows
                frames.append(Frame(self.KEEPALIVE, keepalive=True))
        finish = reply.controls.finish or reply.finish
        frames.append(Frame(self._or_chunk(reply, role, finish)))
        if not reply.controls.no_usage:
            cost = reply.controls.cost
            if cost is None:
                cost = round(reply.prompt_tokens * 0.15e-6 + reply.completion_tokens * 0.6e-6, 10)
            usage = {
                "prompt_tokens": reply.prompt_tokens,
                "completion_tokens": reply.completion_tokens,
                "total_tokens": reply.prompt_tokens + reply.completion_tokens,
                "cost": cost,
                "is_byok": False,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "cost_details": {"upstream_inference_cost": None},
                "completion_tokens_details": {
                    "reasoning_tokens": reply.reasoning_tokens,
                    "image_tokens": 0,
                },
            }
            frames.append(Frame(self._or_chunk(reply, role, finish, usage=usage)))
        frames.append(Frame(b"data: [DONE]\n\n"))
        return frames

    def stream_error(self, reply: Reply) -> bytes:
        return sse_data(
            {
                "id": f"gen-{reply.created}-{reply.rid[:20]}",
                "object": "chat.completion.chunk",
                "created": reply.created,
                "model": reply.model,
                "provider": "OpenAI",
                "error": {"code": "server_error", "message": "Provider disconnected unexpectedly"},
                "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
            }
        )
