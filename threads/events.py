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


# One encoder for every frame: json.dumps with options builds a new one per call.
_to_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def sse_frame(event: str, data: dict[str, Any], event_id: int | None = None) -> bytes:
    head = f"event: {event}" if event_id is None else f"id: {event_id}\nevent: {event}"
    return f"{head}\ndata: {_to_json(data)}\n\n".encode()
