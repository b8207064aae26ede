"""The reply event vocabulary both transports render: WebSocket fragments and SSE.

A generation publishes every event to its thread's channel-layer group as
`{"type": "reply.event", "message": <uuid>, "seq": n, "event": name, "data": {...}}`.
`seq` increases by one per event of a reply; SSE uses it as the event id.

Events: start, status, delta, reasoning, sources, done, error (see README, "The JSON API").
"""

from __future__ import annotations

import json
from typing import Any

REPLY_EVENT = "reply.event"


def thread_group(thread_code: object) -> str:
    return f"thread.{thread_code}"


def sse_frame(event: str, data: dict[str, Any], event_id: int | None = None) -> bytes:
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append(f"event: {event}")
    lines.append("data: " + json.dumps(data, separators=(",", ":"), ensure_ascii=False))
    return ("\n".join(lines) + "\n\n").encode()
