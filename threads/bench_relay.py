"""The yardstick for `manage.py bench_overhead`: a bare pass-through relay.

An ASGI app for daphne that forwards POST /openai/v1/chat/completions to UPSTREAM with one
pooled httpx client (httpx's own transport) and relays the response's bytes as they come:
no parsing, no database, no framework. What the machine charges for that much (HTTP in, HTTP
out, httpx in between) is the floor the app's own overhead is read against; the issue's
40-line Starlette + httpx relay is the same thing on another server.

    UPSTREAM=http://127.0.0.1:PORT daphne threads.bench_relay:application
"""

from __future__ import annotations

import os
from typing import Any

import httpx

UPSTREAM = os.environ.get("UPSTREAM", "http://127.0.0.1:8001")
PATH = "/openai/v1/chat/completions"
_client: httpx.AsyncClient | None = None


def _http() -> httpx.AsyncClient:
    global _client
    if _client is None:
        limits = httpx.Limits(max_connections=500, max_keepalive_connections=500)
        _client = httpx.AsyncClient(limits=limits, timeout=60.0)
    return _client


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/healthz":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    if scope["path"] != PATH:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    headers = {k.decode(): v.decode() for k, v in scope["headers"] if k in (b"authorization",)}
    request = _http().build_request(
        "POST",
        UPSTREAM + PATH,
        content=body,
        headers=headers | {"content-type": "application/json"},
    )
    response = await _http().send(request, stream=True)
    try:
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": [(b"content-type", response.headers.get("content-type", "").encode())],
            }
        )
        async for chunk in response.aiter_raw():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    finally:
        await response.aclose()
    await send({"type": "http.response.body", "body": b""})
