"""The fake's Anthropic vendor."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from .vendor import JSON_TYPE, ErrorAnswer, Vendor, compact, sse_data
from .wire import Frame, Reply


def _event(name: str, obj: Any) -> bytes:
    return b"event: " + name.encode() + b"\n" + sse_data(obj)


class Anthropic(Vendor):
    name = "anthropic"
    content_type = "text/event-stream; charset=utf-8"

    def max_tokens(self, body: dict[str, Any]) -> int | None:
        value = body.get("max_tokens")
        return int(value) if value else None

    def reject(self, headers: Mapping[str, str], reply: Reply) -> ErrorAnswer | None:
        if not headers.get("x-api-key"):
            return self._error(401, "authentication_error", "x-api-key header is required")
        if not headers.get("anthropic-version"):
            return self._error(
                400, "invalid_request_error", "anthropic-version: header is required"
            )
        if "max_tokens" not in reply.body:
            return self._error(400, "invalid_request_error", "max_tokens: Field required")
        return None

    def _error(
        self, status: int, type_: str, message: str, headers: list[tuple[str, str]] | None = None
    ) -> ErrorAnswer:
        body = {
            "type": "error",
            "error": {"type": type_, "message": message},
            "request_id": f"req_{uuid.uuid4().hex[:24]}",
        }
        return status, headers or [], compact(body), JSON_TYPE

    def error(self, scenario: str, reply: Reply, status: int = 0) -> ErrorAnswer:
        c, m = reply.controls, reply.model
        retry = [("retry-after", c.retry_after or "5")]
        if scenario == "auth":
            return self._error(401, "authentication_error", "invalid x-api-key")
        if scenario in ("credits", "quota"):
            return self._error(
                400,
                "invalid_request_error",
                "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits.",
            )
        if scenario == "forbidden":
            return self._error(
                403,
                "permission_error",
                "Your API key does not have permission to use the specified resource.",
            )
        if scenario == "unknown_model":
            return self._error(404, "not_found_error", f"model: {m}")
        if scenario == "rate_limit":
            return self._error(
                429,
                "rate_limit_error",
                "This request would exceed the rate limit for your organization of 50,000 input tokens per minute. For details, refer to: https://docs.claude.com/en/api/rate-limits.",
                [*retry, ("anthropic-ratelimit-requests-remaining", "0")],
            )
        if scenario == "server_error":
            return self._error(500, "api_error", "Internal server error")
        if scenario == "overloaded":
            return self._error(529, "overloaded_error", "Overloaded", retry)
        return self._error(status or 400, "invalid_request_error", "Fake error requested.")

    def stream_headers(self, reply: Reply) -> list[tuple[str, str]]:
        return [("request-id", f"req_{reply.rid}")]

    def frames(self, reply: Reply) -> list[Frame]:
        usage_on = not reply.controls.no_usage
        message: dict[str, Any] = {
            "id": f"msg_{reply.rid}",
            "type": "message",
            "role": "assistant",
            "model": reply.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
        }
        if usage_on:
            message["usage"] = {
                "input_tokens": reply.prompt_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 1,
                "service_tier": "standard",
            }
        frames = [Frame(_event("message_start", {"type": "message_start", "message": message}))]
        index = 0
        if reply.thoughts:
            frames.append(
                self._block_start(index, {"type": "thinking", "thinking": "", "signature": ""})
            )
            frames.append(Frame(_event("ping", {"type": "ping"})))
            for t in reply.thoughts:
                delta = {"type": "thinking_delta", "thinking": t}
                frames.append(self._delta(index, delta, token=True))
            frames.append(self._delta(index, {"type": "signature_delta", "signature": "ZmFrZQ=="}))
            frames.append(
                Frame(_event("content_block_stop", {"type": "content_block_stop", "index": index}))
            )
            index += 1
        frames.append(self._block_start(index, {"type": "text", "text": ""}))
        if not reply.thoughts:
            frames.append(Frame(_event("ping", {"type": "ping"})))
        for piece in reply.answer:
            frames.append(self._delta(index, {"type": "text_delta", "text": piece}, token=True))
        frames.append(
            Frame(_event("content_block_stop", {"type": "content_block_stop", "index": index}))
        )
        stop = reply.controls.finish or ("max_tokens" if reply.finish == "length" else "end_turn")
        delta_event: dict[str, Any] = {
            "type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": None},
        }
        if usage_on:
            delta_event["usage"] = {"output_tokens": reply.completion_tokens}
        frames.append(Frame(_event("message_delta", delta_event)))
        frames.append(Frame(_event("message_stop", {"type": "message_stop"})))
        return frames

    def _block_start(self, index: int, block: dict[str, Any]) -> Frame:
        event = {"type": "content_block_start", "index": index, "content_block": block}
        return Frame(_event("content_block_start", event))

    def _delta(self, index: int, delta: dict[str, Any], token: bool = False) -> Frame:
        event = {"type": "content_block_delta", "index": index, "delta": delta}
        return Frame(_event("content_block_delta", event), token=token)

    def stream_error(self, reply: Reply) -> bytes:
        return _event(
            "error",
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        )

    def malformed(self, reply: Reply) -> bytes:
        return b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_de\n\n'
