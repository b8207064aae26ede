"""The providers' HTTP transport: httpx and httpcore over plain asyncio sockets.

httpcore reaches the network through anyio on asyncio, and every read of a streamed body
pays for it: a cancel scope with its deadline timer, task-state lookups in weak
dictionaries, a context manager or three. A reply reads 50-100 chunks, each a separate
read, on the one event loop that streams every other reply; measured with `manage.py
bench_overhead`, anyio's share was about a tenth of the app's CPU. `AsyncioBackend` speaks
httpcore's network-backend interface with an `asyncio.Protocol` instead: a read is one
future. A read timeout is a deadline on the connection, checked by one timer that is
re-armed only when it fires early, not a timer made and cancelled for each of a stream's
reads.

`transport(...)` is `httpx.AsyncHTTPTransport(...)` with this backend under its connection
pool; requests through an environment proxy keep httpx's own transport.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx
from httpcore import (
    ConnectError,
    ConnectTimeout,
    ReadError,
    ReadTimeout,
    WriteError,
    WriteTimeout,
)

# Stop reading from the socket while this much is buffered and unread.
READ_HIGH_WATER = 256 * 1024


class _Protocol(asyncio.Protocol):
    """Buffers what arrives; one reader and one writer wait on it at a time (httpcore's
    connections are used by one request at a time)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self.reader: asyncio.Future[None] | None = None
        # The waiting read fails at `deadline`; `watchdog` fires at or before it.
        self.deadline = 0.0
        self.watchdog: asyncio.TimerHandle | None = None
        self.writable: asyncio.Future[None] | None = None
        self.reading_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > READ_HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
            self.reading_paused = True
        self._wake_reader()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake_reader()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        self._wake_reader()
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)

    def pause_writing(self) -> None:
        if self.writable is None or self.writable.done():
            self.writable = self.loop.create_future()

    def resume_writing(self) -> None:
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)

    def _wake_reader(self) -> None:
        if self.reader is not None and not self.reader.done():
            self.reader.set_result(None)

    def wait_for_data(self, timeout: float | None) -> asyncio.Future[None]:
        """A future the next arrival (or EOF) completes, failing with TimeoutError if
        nothing comes within `timeout`."""
        self.reader = reader = self.loop.create_future()
        if timeout is not None:
            self.deadline = deadline = self.loop.time() + timeout
            watchdog = self.watchdog
            if watchdog is None or watchdog.when() > deadline:
                if watchdog is not None:
                    watchdog.cancel()
                self.watchdog = self.loop.call_at(deadline, self._check_deadline)
        return reader

    def _check_deadline(self) -> None:
        self.watchdog = None
        reader = self.reader
        if reader is None or reader.done():
            return  # no read waits: the next one arms a new timer
        if self.loop.time() >= self.deadline:
            reader.set_exception(TimeoutError())
        else:  # a later read moved the deadline on
            self.watchdog = self.loop.call_at(self.deadline, self._check_deadline)


def _expire(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


async def _wait(protocol: _Protocol, future: asyncio.Future[None], timeout: float | None) -> None:
    timer = None if timeout is None else protocol.loop.call_later(timeout, _expire, future)
    try:
        await future
    finally:
        if timer is not None:
            timer.cancel()


class AsyncioStream(httpcore.AsyncNetworkStream):
    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._transport = transport
        self._protocol = protocol

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        protocol = self._protocol
        if not protocol.buffer and not protocol.eof:
            try:
                await protocol.wait_for_data(timeout)
            except TimeoutError:
                raise ReadTimeout("The read timed out.") from None
            finally:
                protocol.reader = None
        if protocol.buffer:
            data = bytes(protocol.buffer[:max_bytes])
            del protocol.buffer[:max_bytes]
            if protocol.reading_paused and len(protocol.buffer) <= READ_HIGH_WATER // 4:
                protocol.reading_paused = False
                self._transport.resume_reading()
            return data
        if protocol.error is not None:
            raise ReadError(str(protocol.error)) from protocol.error
        return b""  # the server closed the connection

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        protocol = self._protocol
        if self._transport.is_closing() or protocol.error is not None:
            raise WriteError("The connection is closed.")
        self._transport.write(buffer)
        if protocol.writable is not None and not protocol.writable.done():
            try:
                await _wait(protocol, asyncio.shield(protocol.writable), timeout)
            except TimeoutError:
                raise WriteTimeout("The write timed out.") from None

    async def aclose(self) -> None:
        self._transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = self._protocol.loop
        try:
            async with asyncio.timeout(timeout):
                tls = await loop.start_tls(
                    self._transport, self._protocol, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError:
            self._transport.close()
            raise ConnectTimeout("The TLS handshake timed out.") from None
        except (OSError, ssl.SSLError) as exc:
            self._transport.close()
            raise ConnectError(str(exc)) from exc
        assert isinstance(tls, asyncio.Transport)
        self._protocol.transport = tls
        return AsyncioStream(tls, self._protocol)

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            # An idle pooled connection with data or EOF waiting was closed by the server.
            return self._protocol.eof or bool(self._protocol.buffer)
        if info == "client_addr":
            return self._transport.get_extra_info("sockname")
        if info == "server_addr":
            return self._transport.get_extra_info("peername")
        if info in ("ssl_object", "socket") and not self._transport.is_closing():
            return self._transport.get_extra_info(info)
        return None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        local = (local_address, 0) if local_address else None
        try:
            async with asyncio.timeout(timeout):
                transport, protocol = await loop.create_connection(
                    lambda: _Protocol(loop), host, port, local_addr=local
                )
        except TimeoutError:
            raise ConnectTimeout(f"Connecting to {host}:{port} timed out.") from None
        except OSError as exc:
            raise ConnectError(str(exc)) from exc
        sock = transport.get_extra_info("socket")
        for option in socket_options or ():
            sock.setsockopt(*option)
        return AsyncioStream(transport, protocol)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport, protocol = await loop.create_unix_connection(
                    lambda: _Protocol(loop), path
                )
        except TimeoutError:
            raise ConnectTimeout(f"Connecting to {path} timed out.") from None
        except OSError as exc:
            raise ConnectError(str(exc)) from exc
        sock: socket.socket = transport.get_extra_info("socket")
        for option in socket_options or ():
            sock.setsockopt(*option)
        return AsyncioStream(transport, protocol)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def transport(**kwargs: Any) -> httpx.AsyncHTTPTransport:
    """`httpx.AsyncHTTPTransport(**kwargs)` reading and writing through `AsyncioBackend`."""
    result = httpx.AsyncHTTPTransport(**kwargs)
    pool = result._pool
    # httpcore's pool keeps its backend here (1.0); a test fails if that ever moves.
    if isinstance(pool, httpcore.AsyncConnectionPool) and hasattr(pool, "_network_backend"):
        pool._network_backend = AsyncioBackend()
    return result
