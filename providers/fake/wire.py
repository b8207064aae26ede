"""HTTP/1.1 as the fake writes it: status lines, heads, chunked bodies, frames."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from .controls import Controls

# --- HTTP plumbing ------------------------------------------------------------------------


def _reason(status: int) -> str:
    if status == 529:
        return "Overloaded"  # Anthropic's own status, unknown to http.HTTPStatus
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class Wire:
    """One response on one connection, written byte for byte."""

    def __init__(self, writer: asyncio.StreamWriter, keep_alive: bool = True) -> None:
        self.writer = writer
        self.finished = False
        self.connection = "keep-alive" if keep_alive else "close"
        self.broken = False  # a fault left the connection unfit for another request

    def _head(self, status: int, headers: list[tuple[str, str]]) -> bytes:
        lines = [f"HTTP/1.1 {status} {_reason(status)}"]
        lines += [f"{k}: {v}" for k, v in headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def whole(
        self, status: int, body: bytes, content_type: str, headers: list[tuple[str, str]]
    ) -> None:
        head = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        head.append(("Connection", self.connection))
        self.writer.write(self._head(status, [*head, *headers]) + body)
        await self.writer.drain()

    async def start(self, content_type: str, headers: list[tuple[str, str]]) -> None:
        head = [
            ("Content-Type", content_type),
            ("Transfer-Encoding", "chunked"),
            ("Connection", self.connection),
            ("Cache-Control", "no-cache"),
        ]
        self.writer.write(self._head(200, [*head, *headers]))
        await self.writer.drain()

    async def chunk(self, data: bytes) -> None:
        self.writer.write(b"%x\r\n%s\r\n" % (len(data), data))
        await self.writer.drain()

    async def end(self) -> None:
        self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()

    def abort(self) -> None:
        self.broken = True
        self.writer.transport.abort()


@dataclass(slots=True)
class Frame:
    data: bytes
    token: bool = False  # carries one token: paced, and faults are placed between these
    keepalive: bool = False  # sent at once, even before the TTFT delay


@dataclass(slots=True)
class Reply:
    """What one request will be answered with, vendor-neutral."""

    vendor: str
    model: str
    body: dict[str, Any]
    controls: Controls
    answer: list[str]
    thoughts: list[str]
    finish: str  # "stop" or "length", before the vendor's own spelling
    prompt_tokens: int
    rid: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def completion_tokens(self) -> int:
        return len(self.answer) + len(self.thoughts)

    @property
    def reasoning_tokens(self) -> int:
        return len(self.thoughts)
