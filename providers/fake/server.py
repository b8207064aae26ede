"""The fake's HTTP server: routes, connections, recording, scripted scenarios."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from .anthropic import Anthropic
from .controls import (
    COMPAT_MODELS,
    FAULTS,
    PROVIDER_VENDORS,
    THOUGHT_PIECES,
    VENDOR_PREFIXES,
    Controls,
    RecordedRequest,
    Scenario,
    base_url,
    controls_from_headers,
    reply_pieces,
    split_model,
)
from .gemini import Gemini
from .openai import Compat, OpenAI, OpenRouter
from .perplexity import Perplexity
from .vendor import JSON_TYPE, SCENARIOS, ErrorAnswer, Vendor, compact
from .wire import Reply, Wire

VENDORS: dict[str, Vendor] = {
    v.name: v for v in (OpenAI(), Compat(), OpenRouter(), Perplexity(), Gemini(), Anthropic())
}
_ROUTES = {
    ("openai", "/chat/completions"),
    ("perplexity", "/chat/completions"),
    ("openrouter", "/chat/completions"),
    ("anthropic", "/messages"),
    ("compat", "/chat/completions"),
    ("compat", "/models"),
}


def _route(path: str) -> tuple[str, str] | None:
    """(vendor, endpoint) for a path, or None."""
    for vendor, prefix in VENDOR_PREFIXES.items():
        if not path.startswith(prefix + "/"):
            continue
        rest = path[len(prefix) :]
        if vendor == "gemini":
            if rest.startswith("/models/") and rest.endswith(":streamGenerateContent"):
                return vendor, "stream"
            return None
        return (vendor, rest) if (vendor, rest) in _ROUTES else None
    return None


# --- The server ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Incoming:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    raw: bytes


class _Connection:
    """A client connection's reader, with what was read but not yet used."""

    def __init__(self, reader: asyncio.StreamReader, number: int) -> None:
        self.reader = reader
        self.number = number  # the server's count of connections, from 1
        self.pending = bytearray()

    async def fill(self) -> bool:
        """Read what has arrived into `pending`; False at EOF."""
        data = await self.reader.read(65536)
        self.pending += data
        return bool(data)


class FakeProviderServer:
    """The fake vendor server. `await start()`, then `serve_forever()` or `close()`."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self._connections = itertools.count(1)
        self._scenarios: list[Scenario] = []
        self._lock = threading.Lock()  # the fixture scripts from the test thread
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.host = "127.0.0.1"
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = await asyncio.start_server(self._handle, host, port)
        self.host, self.port = self._server.sockets[0].getsockname()[:2]

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    # Scenarios and records --------------------------------------------------------------

    def script(
        self, vendor: str, model: str | None = None, times: int = 1, **controls: Any
    ) -> None:
        vendor = PROVIDER_VENDORS.get(vendor, vendor)
        if vendor not in VENDOR_PREFIXES:
            raise ValueError(f"unknown vendor {vendor!r}")
        with self._lock:
            self._scenarios.append(Scenario(vendor, model, times, controls))

    def reset(self) -> None:
        with self._lock:
            self._scenarios.clear()
            self.requests.clear()

    def _take_scenario(self, vendor: str, model: str) -> dict[str, Any]:
        with self._lock:
            for scenario in self._scenarios:
                if scenario.vendor == vendor and scenario.model in (None, model):
                    scenario.times -= 1
                    if scenario.times <= 0:
                        self._scenarios.remove(scenario)
                    return scenario.controls
        return {}

    # Connection handling ----------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            # One request after another, until the client or a fault closes the connection.
            conn = _Connection(reader, next(self._connections))
            while (incoming := await self._read(conn)) is not None:
                if not await self._serve(incoming, conn, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _read(self, conn: _Connection) -> _Incoming | None:
        while (end := conn.pending.find(b"\r\n\r\n")) < 0:
            if len(conn.pending) > 65536:
                raise asyncio.LimitOverrunError("request head too long", len(conn.pending))
            if not await conn.fill():
                if conn.pending:
                    raise asyncio.IncompleteReadError(bytes(conn.pending), None)
                return None  # the client closed an idle connection
        head = bytes(conn.pending[:end])
        del conn.pending[: end + 4]
        request_line, *lines = head.decode("latin-1").split("\r\n")
        parts = request_line.split(" ")
        if len(parts) != 3:
            return None
        headers: dict[str, str] = {}
        for line in lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length") or 0)
        while len(conn.pending) < length:
            if not await conn.fill():
                raise asyncio.IncompleteReadError(bytes(conn.pending), length)
        raw = bytes(conn.pending[:length])
        del conn.pending[:length]
        path, _, query = parts[1].partition("?")
        return _Incoming(parts[0], unquote(path), query, headers, raw)

    async def _serve(
        self, incoming: _Incoming, conn: _Connection, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request; return whether the connection may take another."""
        keep_alive = incoming.headers.get("connection", "").lower() != "close"
        wire = Wire(writer, keep_alive)
        if incoming.path.startswith("/_fake/"):
            await self._control(incoming, wire)
            return keep_alive
        route = _route(incoming.path)
        if route is None:
            body = compact({"error": {"message": f"No route for {incoming.path}"}})
            await wire.whole(404, body, JSON_TYPE, [])
            return keep_alive
        payload: Any
        try:
            payload = json.loads(incoming.raw) if incoming.raw else {}
        except ValueError:
            payload = None
        record = RecordedRequest(
            incoming.method, incoming.path, incoming.query, incoming.headers, payload, route[0]
        )
        record.connection = conn.number
        with self._lock:
            self.requests.append(record)
        responder = asyncio.create_task(self._respond(route, incoming, record, wire))
        watcher = asyncio.create_task(self._watch_hangup(conn))
        try:
            await asyncio.wait({responder, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            record.client_closed = not wire.finished
            for task in (responder, watcher):
                task.cancel()
            await asyncio.gather(responder, watcher, return_exceptions=True)
            record.finished.set()
        return keep_alive and wire.finished and not wire.broken

    async def _watch_hangup(self, conn: _Connection) -> None:
        # EOF here means the client hung up; anything it sends meanwhile (its next request,
        # once it has read this response) is kept for the next `_read`.
        while await conn.fill():
            pass

    async def _respond(
        self, route: tuple[str, str], incoming: _Incoming, record: RecordedRequest, wire: Wire
    ) -> None:
        vendor = VENDORS[route[0]]
        body = record.json if isinstance(record.json, dict) else {}
        full_model = vendor.model(incoming.path, body)
        model, suffix = split_model(full_model)
        record.model = model
        controls = Controls.from_layers(
            controls_from_headers(incoming.headers), suffix, self._take_scenario(vendor.name, model)
        )
        reply = self._reply(vendor, model, body, controls, len(incoming.raw))
        if controls.fault == "hang":
            await asyncio.Event().wait()  # until the client gives up
        if route == ("compat", "/models"):
            await self._models(vendor, reply, wire)
        elif record.json is None or not isinstance(record.json, dict):
            answer = vendor.error("bad_request", reply)
            await wire.whole(*_whole_args(answer))
        elif controls.status:
            scenario = SCENARIOS.get(controls.status, "other")
            await wire.whole(*_whole_args(vendor.error(scenario, reply, controls.status)))
        elif (refused := vendor.reject(incoming.headers, reply)) is not None:
            await wire.whole(*_whole_args(refused))
        else:
            await self._stream(vendor, reply, wire)
        wire.finished = True

    def _reply(
        self, vendor: Vendor, model: str, body: dict[str, Any], c: Controls, size: int
    ) -> Reply:
        answer = reply_pieces(c.tokens, c.text)
        finish = "stop"
        limit = vendor.max_tokens(body)
        if limit is not None and limit < len(answer):
            answer, finish = answer[:limit], "length"
        think = c.think
        if think is None:
            think = vendor.name == "perplexity" and model.startswith(
                ("sonar-reasoning", "sonar-deep-research")
            )
        return Reply(
            vendor=vendor.name,
            model=model,
            body=body,
            controls=c,
            answer=answer,
            thoughts=list(THOUGHT_PIECES) if think else [],
            finish=finish,
            prompt_tokens=c.prompt_tokens if c.prompt_tokens is not None else max(1, size // 10),
        )

    async def _models(self, vendor: Vendor, reply: Reply, wire: Wire) -> None:
        if reply.controls.status:
            scenario = SCENARIOS.get(reply.controls.status, "other")
            await wire.whole(*_whole_args(vendor.error(scenario, reply, reply.controls.status)))
            return
        data = [
            {"id": m, "object": "model", "created": 1730000000, "owned_by": "library"}
            for m in COMPAT_MODELS
        ]
        await wire.whole(200, compact({"object": "list", "data": data}), JSON_TYPE, [])

    async def _stream(self, vendor: Vendor, reply: Reply, wire: Wire) -> None:
        c = reply.controls
        frames = vendor.frames(reply)
        tokens = sum(f.token for f in frames)
        fault = c.fault if c.fault in FAULTS - {"hang", "linger"} else ""
        fault_at = min(tokens, c.fault_at if c.fault_at is not None else tokens // 2)
        await wire.start(vendor.content_type, vendor.stream_headers(reply))
        sent = 0
        waited_ttft = False
        for frame in frames:
            if fault and sent == fault_at and (frame.token or sent == tokens):
                await self._fault(fault, vendor, reply, wire)
                return
            if not frame.keepalive and not waited_ttft:
                waited_ttft = True
                await asyncio.sleep(c.ttft_ms / 1000)
            elif frame.token and sent:
                await asyncio.sleep(c.pace_ms / 1000)
            await wire.chunk(frame.data)
            sent += frame.token
        if c.fault == "linger":
            await asyncio.Event().wait()  # every event sent, the body left open
        await wire.end()

    async def _fault(self, fault: str, vendor: Vendor, reply: Reply, wire: Wire) -> None:
        if fault == "stall":
            await asyncio.Event().wait()
        if fault == "reset":
            wire.abort()
            return
        if fault == "malformed":
            await wire.chunk(vendor.malformed(reply))
        elif fault == "error":
            await wire.chunk(vendor.stream_error(reply))
        await wire.end()  # "cut" and the two above: a clean end with no terminal event

    async def _control(self, incoming: _Incoming, wire: Wire) -> None:
        endpoint = incoming.path[len("/_fake/") :]
        if endpoint == "requests" and incoming.method == "GET":
            with self._lock:
                records = [r.to_dict() for r in self.requests]
            await wire.whole(200, compact(records), JSON_TYPE, [])
        elif endpoint == "reset" and incoming.method == "POST":
            self.reset()
            await wire.whole(200, b'{"ok":true}', JSON_TYPE, [])
        elif endpoint == "script" and incoming.method == "POST":
            try:
                payload = json.loads(incoming.raw or b"null")
                items = payload if isinstance(payload, list) else [payload]
                for item in items:
                    item = dict(item)
                    self.script(
                        item.pop("vendor"),
                        item.pop("model", None),
                        int(item.pop("times", 1)),
                        **item,
                    )
            except (ValueError, KeyError, TypeError) as exc:
                await wire.whole(400, compact({"error": {"message": str(exc)}}), JSON_TYPE, [])
                return
            await wire.whole(200, b'{"ok":true}', JSON_TYPE, [])
        else:
            await wire.whole(404, b'{"error":{"message":"unknown control"}}', JSON_TYPE, [])
        wire.finished = True


def _whole_args(answer: ErrorAnswer) -> tuple[int, bytes, str, list[tuple[str, str]]]:
    status, headers, body, content_type = answer
    return status, body, content_type, headers


def provider_settings(root: str, api_key: str = "fake-key") -> dict[str, dict[str, str]]:
    """settings.LLM_PROVIDERS pointing every provider at a fake served at `root`."""
    return {pid: {"api_key": api_key, "base_url": base_url(root, pid)} for pid in PROVIDER_VENDORS}


def env_lines(root: str, api_key: str = "fake-key") -> list[str]:
    """The environment that points the app's settings at a fake served at `root`."""
    lines: list[str] = []
    for pid, conf in provider_settings(root, api_key).items():
        prefix = pid.upper()
        lines += [f"{prefix}_BASE_URL={conf['base_url']}", f"{prefix}_API_KEY={conf['api_key']}"]
    return lines
