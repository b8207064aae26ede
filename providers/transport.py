"""The providers' HTTP transport: HTTP/1.1 for httpx, straight over asyncio.

Every reply reads 50-100 chunks of an SSE body, each a separate network read, on the one
event loop that streams every other reply. Under httpx's own transport each read crossed
httpcore's connection and pool layers, h11's state machine (two events per chunk, each
validated) and anyio's cancel scopes; measured reading the bench's 54-chunk replies 25 at a
time in one process, that cost about 3.5 ms of CPU per reply through httpcore (already on a
plain asyncio backend), and 2.0 ms through this transport, which parses the bytes where they
arrive.

`Transport` is an `httpx.AsyncBaseTransport`, so the providers keep httpx's client, request
building, timeouts and errors; what it replaces is the wire underneath, which the providers
use in one shape: a request with a small JSON body, a response of a few headers and a body
sent chunked (SSE), by length (errors, model lists) or until the connection closes.

- Connections are pooled per (scheme, host, port) and kept alive while the server allows:
  a body read to its end returns its connection to the pool; one closed early, cut off or
  cancelled closes it. An idle connection the server has closed (or written to) since, or
  idle longer than `Limits.keepalive_expiry`, is dropped when next picked.
- Reads are bounded by the read timeout per wait (a deadline on the connection, checked by
  one timer that is re-armed only when it fires early), connects by the connect timeout,
  writes by the write timeout, the wait for a free connection by the pool timeout.
- Failures are httpx's exceptions: ConnectError / ConnectTimeout, ReadError / ReadTimeout,
  WriteError / WriteTimeout, RemoteProtocolError (a malformed response, or a body cut short),
  PoolTimeout.

The wire format itself (a response's head, chunked bodies) is in providers/http11.py.
Requests through an environment proxy keep httpx's own transport (httpx mounts it itself).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import httpx

from .http11 import ChunkedDecoder, Head, parse_head

# Stop reading from a socket while this much is buffered and unread.
READ_HIGH_WATER = 256 * 1024
# A response's status line and headers may not be longer than this.
MAX_HEAD = 64 * 1024
_NO_BODY_STATUS = (204, 304)

Key = tuple[bytes, bytes, int]


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection: what arrives is buffered; one request at a time reads
    it, waiting for more with `wait()`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, key: Key) -> None:
        self.loop = loop
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self.reader: asyncio.Future[None] | None = None
        self.writable: asyncio.Future[None] | None = None
        self.reading_paused = False
        # The waiting read fails at `deadline`; `watchdog` fires at or before it.
        self.deadline = 0.0
        self.watchdog: asyncio.TimerHandle | None = None
        self.idle_since = 0.0

    # --- asyncio.Protocol ------------------------------------------------------------------

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
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None

    def pause_writing(self) -> None:
        if self.writable is None or self.writable.done():
            self.writable = self.loop.create_future()

    def resume_writing(self) -> None:
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)

    def _wake_reader(self) -> None:
        if self.reader is not None and not self.reader.done():
            self.reader.set_result(None)

    # --- reading and writing ---------------------------------------------------------------

    async def wait(self, timeout: float | None) -> None:
        """Wait for more data or the end of the stream (raise TimeoutError after `timeout`)."""
        if self.eof:
            return
        self.reader = reader = self.loop.create_future()
        if timeout is not None:
            self.deadline = deadline = self.loop.time() + timeout
            watchdog = self.watchdog
            if watchdog is None or watchdog.when() > deadline:
                if watchdog is not None:
                    watchdog.cancel()
                self.watchdog = self.loop.call_at(deadline, self._check_deadline)
        try:
            await reader
        finally:
            self.reader = None

    def _check_deadline(self) -> None:
        self.watchdog = None
        reader = self.reader
        if reader is None or reader.done():
            return  # no read waits: the next one arms a new timer
        if self.loop.time() >= self.deadline:
            reader.set_exception(TimeoutError())
        else:  # a later read moved the deadline on
            self.watchdog = self.loop.call_at(self.deadline, self._check_deadline)

    def consumed(self) -> None:
        """The reader took data from the buffer: read from the socket again if it paused."""
        if self.reading_paused and len(self.buffer) <= READ_HIGH_WATER // 4:
            self.reading_paused = False
            if self.transport is not None:
                self.transport.resume_reading()

    async def write(self, data: bytes, timeout: float | None) -> None:
        transport = self.transport
        if transport is None or transport.is_closing() or self.eof:
            raise ConnectionError("the connection is closed")
        transport.write(data)
        if self.writable is not None and not self.writable.done():
            async with asyncio.timeout(timeout):
                await asyncio.shield(self.writable)
            if self.error is not None or transport.is_closing():
                raise ConnectionError("the connection closed while writing")

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None

    def usable_when_idle(self) -> bool:
        """Whether an idle connection may carry another request: nothing has arrived on it
        since its last response (data or EOF there means the server closed or broke it)."""
        transport = self.transport
        return not (self.eof or self.buffer or transport is None or transport.is_closing())

    def get_extra_info(self, name: str) -> Any:
        """httpx's `network_stream` extension: what the socket knows (ssl_object, ...)."""
        if name == "is_readable":  # as httpcore's streams say: something (or EOF) arrived
            return self.eof or bool(self.buffer)
        if self.transport is None or self.transport.is_closing():
            return None
        return self.transport.get_extra_info(name)


# --- the transport ----------------------------------------------------------------------------


class Transport(httpx.AsyncBaseTransport):
    """HTTP/1.1 with a keep-alive pool, for one event loop (see the module's docstring)."""

    def __init__(
        self, verify: ssl.SSLContext | str | bool = True, limits: httpx.Limits | None = None
    ) -> None:
        limits = limits or httpx.Limits()
        self._verify = verify
        self._ssl: ssl.SSLContext | None = None
        self._max = limits.max_connections
        self._max_idle = limits.max_keepalive_connections
        self._expiry = limits.keepalive_expiry
        self._idle: dict[Key, list[_Connection]] = {}
        self._open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    # --- connections -----------------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            if isinstance(self._verify, ssl.SSLContext):
                self._ssl = self._verify
            else:
                self._ssl = httpx.create_ssl_context(verify=self._verify)
                self._ssl.set_alpn_protocols(["http/1.1"])
        return self._ssl

    async def _acquire(
        self, request: httpx.Request, key: Key, timeouts: dict[str, Any]
    ) -> _Connection:
        """A kept connection to `key`, or a new one when the limit allows; otherwise wait
        (at most the pool timeout) for a response to give one back."""
        try:
            async with asyncio.timeout(timeouts.get("pool")):
                while (conn := self._kept(key)) is None:
                    if self._max is None or self._open < self._max or self._closed_idle_one():
                        break
                    waiter = asyncio.get_running_loop().create_future()
                    self._waiters.append(waiter)
                    try:
                        await waiter
                    finally:
                        if waiter in self._waiters:
                            self._waiters.remove(waiter)
        except TimeoutError:
            raise httpx.PoolTimeout("No connection came free in time.", request=request)
        if conn is not None:
            return conn
        self._open += 1
        try:
            return await self._connect(request, key, timeouts.get("connect"))
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise

    def _kept(self, key: Key) -> _Connection | None:
        """The most recently used idle connection to `key` that is still fit for use."""
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            expired = self._expiry is not None and conn.loop.time() - conn.idle_since > self._expiry
            if not expired and conn.usable_when_idle():
                return conn
            self._drop(conn)
        return None

    def _closed_idle_one(self) -> bool:
        """Make room by closing an idle connection to another server, if there is one."""
        for conns in self._idle.values():
            if conns:
                self._drop(conns.pop(0))
                return True
        return False

    async def _connect(
        self, request: httpx.Request, key: Key, timeout: float | None
    ) -> _Connection:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        hostname = host.decode("ascii")
        tls = self._ssl_context() if scheme == b"https" else None
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop, key),
                    hostname,
                    port,
                    ssl=tls,
                    server_hostname=hostname if tls is not None else None,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(
                f"Connecting to {hostname}:{port} timed out.", request=request
            )
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from exc
        return conn

    def _release(self, conn: _Connection, reusable: bool) -> None:
        """A response is done with `conn`: keep it for the next request, or close it."""
        idle = self._idle.setdefault(conn.key, [])
        kept = sum(len(conns) for conns in self._idle.values())
        room = self._max_idle is None or kept < self._max_idle
        if reusable and room and not self._closed and conn.usable_when_idle():
            conn.idle_since = conn.loop.time()
            idle.append(conn)
            self._wake_one()
            return
        self._drop(conn)

    def _drop(self, conn: _Connection) -> None:
        conn.close()
        self._open -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    # --- one exchange ----------------------------------------------------------------------

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError("the transport is closed")
        url = request.url
        scheme = url.raw_scheme
        if scheme not in (b"http", b"https"):
            raise httpx.UnsupportedProtocol(f"unsupported scheme {url.scheme!r}", request=request)
        port = url.port or (443 if scheme == b"https" else 80)
        key = (scheme, url.raw_host, port)
        timeouts = request.extensions.get("timeout", {})
        conn = await self._acquire(request, key, timeouts)
        try:
            await self._send(conn, request, timeouts.get("write"))
            head = await self._read_head(conn, request, timeouts.get("read"))
            body = _Body(self, conn, request, head, timeouts.get("read"))
        except BaseException:
            self._drop(conn)
            raise
        return httpx.Response(
            head.status,
            headers=head.headers,
            stream=body,
            extensions={
                "http_version": head.version,
                "reason_phrase": head.reason,
                "network_stream": conn,
            },
        )

    async def _send(self, conn: _Connection, request: httpx.Request, timeout: float | None) -> None:
        lines = [request.method.encode("ascii"), b" ", request.url.raw_path, b" HTTP/1.1\r\n"]
        for name, value in request.headers.raw:
            lines += (name, b": ", value, b"\r\n")
        lines.append(b"\r\n")
        head = b"".join(lines)
        chunked = (request.headers.get("transfer-encoding") or "").lower() == "chunked"
        try:
            content = request.content  # a body in memory (JSON, bytes): one write with the head
        except httpx.RequestNotRead:
            content = None
        try:
            if content is not None and not chunked:
                await conn.write(head + content, timeout)
                return
            await conn.write(head, timeout)
            async for piece in request.stream:  # type: ignore[union-attr]
                if piece:
                    await conn.write(
                        b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece, timeout
                    )
            if chunked:
                await conn.write(b"0\r\n\r\n", timeout)
        except TimeoutError:
            raise httpx.WriteTimeout("The write timed out.", request=request) from None
        except ConnectionError as exc:
            raise httpx.WriteError(str(exc), request=request) from exc

    async def _read_head(
        self, conn: _Connection, request: httpx.Request, timeout: float | None
    ) -> Head:
        while True:
            buffer = conn.buffer
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD:
                    raise httpx.RemoteProtocolError(
                        "The response head is too long.", request=request
                    )
                if conn.eof:
                    raise _lost(conn, request, "Server disconnected without sending a response.")
                try:
                    await conn.wait(timeout)
                except TimeoutError:
                    raise httpx.ReadTimeout("The read timed out.", request=request) from None
                continue
            raw = bytes(buffer[:end])
            del buffer[: end + 4]
            conn.consumed()
            try:
                head = parse_head(raw)
            except ValueError as exc:
                raise httpx.RemoteProtocolError(str(exc), request=request) from None
            if 100 <= head.status < 200 and head.status != 101:
                continue  # 100 Continue, 103 Early Hints: the real response follows
            return head

    async def aclose(self) -> None:
        self._closed = True
        for conns in self._idle.values():
            for conn in conns:
                self._drop(conn)
        self._idle.clear()


def _lost(conn: _Connection, request: httpx.Request, message: str) -> httpx.TransportError:
    if conn.error is not None:
        return httpx.ReadError(str(conn.error) or message, request=request)
    return httpx.RemoteProtocolError(message, request=request)


class _Body(httpx.AsyncByteStream):
    """A response body as its framing says: chunked, by length, or to the connection's end.
    Read to its end, it gives the connection back to the pool; closed before, it closes it."""

    def __init__(
        self,
        transport: Transport,
        conn: _Connection,
        request: httpx.Request,
        head: Head,
        timeout: float | None,
    ) -> None:
        self._transport, self._conn, self._request = transport, conn, request
        self._timeout = timeout
        self._complete = False
        self._released = False
        length = head.header(b"content-length")
        encoding = (head.header(b"transfer-encoding") or b"").lower()
        self._reusable = not head.close and request.headers.get("connection") != "close"
        if request.method == "HEAD" or head.status in _NO_BODY_STATUS:
            self._framing, self._left = "none", 0
        elif encoding.endswith(b"chunked"):
            self._framing, self._left = "chunked", 0
        elif length is not None:
            # Repeated (`5, 5` or two headers) it must say one number.
            values = {v.strip() for v in length.split(b",")}
            if len(values) != 1 or not (value := values.pop()).isdigit():
                raise httpx.RemoteProtocolError("Bad Content-Length.", request=request)
            self._framing, self._left = "length", int(value)
        else:
            self._framing, self._left = "close", 0
            self._reusable = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn, request = self._conn, self._request
        decoder = ChunkedDecoder() if self._framing == "chunked" else None
        try:
            while True:
                eof = conn.eof  # before taking: then all that will ever come is buffered
                try:
                    data, done = self._take(conn.buffer, decoder)
                except ValueError as exc:
                    raise httpx.RemoteProtocolError(str(exc), request=request) from None
                conn.consumed()
                if data:
                    yield data
                if done:
                    break
                if eof:
                    if self._framing == "close" and conn.error is None:
                        break  # the connection's end is the body's
                    raise _lost(conn, request, "The body ended before it was complete.")
                try:
                    await conn.wait(self._timeout)
                except TimeoutError:
                    raise httpx.ReadTimeout("The read timed out.", request=request) from None
            # Bytes beyond the body break the framing of whatever would come next.
            self._complete = not conn.buffer
        finally:
            if self._complete:
                self._release()

    def _take(self, buffer: bytearray, decoder: ChunkedDecoder | None) -> tuple[bytes, bool]:
        """The body's bytes in `buffer` (consumed), and whether the body is complete."""
        if decoder is not None:
            return decoder.feed(buffer)
        if self._framing == "none":
            return b"", True
        if self._framing == "length":
            take = min(self._left, len(buffer))
            data = bytes(buffer[:take])
            del buffer[:take]
            self._left -= take
            return data, self._left == 0
        data = bytes(buffer)
        buffer.clear()
        return data, False

    async def aclose(self) -> None:
        self._release()

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self._transport._release(self._conn, self._complete and self._reusable)


def transport(**kwargs: Any) -> Transport:
    """The transport each provider's pooled httpx client sends through."""
    return Transport(**kwargs)
