"""What every vendor of the fake shares: the base class, SSE data lines, retry hints, scenarios."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from .controls import Controls
from .wire import Frame, Reply

# --- Vendors ------------------------------------------------------------------------------


def compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def sse_data(obj: Any, sep: bytes = b"\n\n", dumps: Callable[[Any], bytes] = compact) -> bytes:
    return b"data: " + dumps(obj) + sep


ErrorAnswer = tuple[int, list[tuple[str, str]], bytes, str]
JSON_TYPE = "application/json"

SCENARIOS = {
    400: "bad_request",
    401: "auth",
    402: "credits",
    403: "forbidden",
    404: "unknown_model",
    429: "rate_limit",
    500: "server_error",
    502: "bad_gateway",
    503: "overloaded",
    504: "timeout",
    529: "overloaded",
}


def retry_seconds(controls: Controls, default: float) -> float:
    try:
        return float(controls.retry_after) if controls.retry_after else default
    except ValueError:
        return default


def retry_header(controls: Controls) -> list[tuple[str, str]]:
    return [("retry-after", controls.retry_after)] if controls.retry_after else []


class Vendor:
    name = ""
    content_type = "text/event-stream"

    def model(self, path: str, body: dict[str, Any]) -> str:
        return str(body.get("model") or "")

    def max_tokens(self, body: dict[str, Any]) -> int | None:
        value = body.get("max_completion_tokens") or body.get("max_tokens")
        return int(value) if value else None

    def reject(self, headers: Mapping[str, str], reply: Reply) -> ErrorAnswer | None:
        """The vendor's answer to a request it would refuse, else None."""
        auth = headers.get("authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            return self.error("auth", reply)
        return None

    def error(self, scenario: str, reply: Reply, status: int = 0) -> ErrorAnswer:
        raise NotImplementedError

    def stream_headers(self, reply: Reply) -> list[tuple[str, str]]:
        return []

    def frames(self, reply: Reply) -> list[Frame]:
        raise NotImplementedError

    def stream_error(self, reply: Reply) -> bytes:
        raise NotImplementedError

    def malformed(self, reply: Reply) -> bytes:
        return b'data: {"id":"chatcmpl-broken","choices":[{"delta":{"content":"tru\n\n'


def spaced(obj: Any) -> bytes:
    # Perplexity's JSON uses Python's default ", " / ": " separators.
    return json.dumps(obj, ensure_ascii=False).encode()
