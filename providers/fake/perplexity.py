"""The fake's Perplexity vendor."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .vendor import JSON_TYPE, ErrorAnswer, Vendor, retry_header, spaced, sse_data
from .wire import Frame, Reply

_PPLX_401 = (
    "<html>\r\n<head><title>401 Authorization Required</title></head>\r\n<body>\r\n"
    "<center><h1>401 Authorization Required</h1></center>\r\n<hr><center>openresty</center>\r\n"
    "</body>\r\n</html>\r\n"
)


class Perplexity(Vendor):
    name = "perplexity"
    content_type = "text/event-stream; charset=utf-8"

    def reject(self, headers: Mapping[str, str], reply: Reply) -> ErrorAnswer | None:
        refused = super().reject(headers, reply)
        if refused:
            return refused
        roles = [m.get("role") for m in reply.body.get("messages") or [] if isinstance(m, dict)]
        while roles and roles[0] == "system":
            roles.pop(0)
        if roles and (
            roles[0] != "user" or any(a == b for a, b in zip(roles, roles[1:], strict=False))
        ):
            return self._error(
                400,
                "After the (optional) system message(s), user and assistant roles should be alternating.",
                "invalid_message",
            )
        return None

    def _error(
        self, status: int, message: str, type_: str, headers: list[tuple[str, str]] | None = None
    ) -> ErrorAnswer:
        body = {"error": {"message": message, "type": type_, "code": status}}
        return status, headers or [], spaced(body), JSON_TYPE

    def error(self, scenario: str, reply: Reply, status: int = 0) -> ErrorAnswer:
        if scenario == "auth":
            return 401, [("server", "cloudflare")], _PPLX_401.encode(), "text/html"
        if scenario == "unknown_model":
            return self._error(
                400,
                f"Invalid model '{reply.model}'. Permitted models can be found in the documentation at https://docs.perplexity.ai/guides/model-cards.",
                "invalid_model",
            )
        if scenario == "rate_limit":
            return self._error(
                429, "Rate limit exceeded", "rate_limit_exceeded", retry_header(reply.controls)
            )
        if scenario in ("credits", "quota"):
            return self._error(402, "Insufficient credits", "insufficient_quota")
        if scenario == "overloaded":
            return self._error(
                503,
                "Service temporarily unavailable",
                "service_unavailable",
                retry_header(reply.controls),
            )
        if scenario == "server_error":
            return self._error(500, "Internal server error", "internal_server_error")
        return self._error(status or 400, "Fake error requested.", "bad_request")

    def _sources(self, reply: Reply) -> tuple[list[str], list[dict[str, str]]]:
        n = reply.controls.sources
        urls = [f"https://example.com/source-{i + 1}" for i in range(n)]
        results = [
            {
                "title": f"Source {i + 1}",
                "url": url,
                "date": f"2025-03-{i + 1:02d}",
                "last_updated": "2025-09-01",
                "snippet": f"Snippet {i + 1}.",
            }
            for i, url in enumerate(urls)
        ]
        return urls, results

    def frames(self, reply: Reply) -> list[Frame]:
        citations, results = self._sources(reply)
        pieces: list[str] = []
        if reply.thoughts:
            # Tags split across chunks on purpose, as live reasoning streams do.
            t = reply.thoughts
            pieces += ["<thi", "nk>\n" + t[0], *t[1:-1], t[-1] + "\n</th", "ink>\n\n"]
        pieces += reply.answer
        frames: list[Frame] = []
        so_far = ""
        for i, piece in enumerate(pieces):
            so_far += piece
            frames.append(
                Frame(
                    self._chunk(reply, i + 1, citations, results, so_far, piece, None), token=True
                )
            )
        finish = reply.controls.finish or reply.finish
        frames.append(
            Frame(self._chunk(reply, len(pieces), citations, results, so_far, "", finish))
        )
        return frames

    def _chunk(
        self,
        reply: Reply,
        count: int,
        citations: list[str],
        results: list[dict[str, str]],
        so_far: str,
        piece: str,
        finish: str | None,
    ) -> bytes:
        chunk: dict[str, Any] = {"id": reply.rid, "model": reply.model, "created": reply.created}
        if not reply.controls.no_usage:
            completion = min(count, reply.completion_tokens)
            usage: dict[str, Any] = {
                "prompt_tokens": reply.prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": reply.prompt_tokens + completion,
                "search_context_size": "low",
            }
            if reply.thoughts:
                usage["reasoning_tokens"] = reply.reasoning_tokens
            if finish:
                total = reply.controls.cost
                inp = round(reply.prompt_tokens * 1e-6, 6)
                out = round(completion * 1e-6, 6)
                if total is None:
                    total = round(inp + out + 0.006, 6)
                usage["cost"] = {
                    "input_tokens_cost": inp,
                    "output_tokens_cost": out,
                    "request_cost": 0.006,
                    "total_cost": total,
                }
            chunk["usage"] = usage
        chunk["citations"] = citations
        chunk["search_results"] = results
        chunk["object"] = "chat.completion"
        chunk["choices"] = [
            {
                "index": 0,
                "finish_reason": finish,
                "message": {"role": "assistant", "content": so_far},
                "delta": {"role": "assistant", "content": piece},
            }
        ]
        return sse_data(chunk, b"\r\n\r\n", spaced)

    def stream_error(self, reply: Reply) -> bytes:
        # Perplexity's in-stream error form is undocumented; the OpenAI shape is the guess.
        return sse_data(
            {
                "error": {
                    "message": "Internal server error",
                    "type": "internal_server_error",
                    "code": 500,
                }
            },
            b"\r\n\r\n",
            spaced,
        )

    def malformed(self, reply: Reply) -> bytes:
        return b'data: {"id": "broken", "choices": [{"delta": {"content": "tru\r\n\r\n'
