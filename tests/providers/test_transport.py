"""providers/transport.py: httpx over our HTTP/1.1 transport, against real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable

import httpx
import pytest
import trustme

from providers.http11 import ChunkedDecoder, parse_head
from providers.transport import transport

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _serve(handler: Handler, tls: ssl.SSLContext | None = None) -> asyncio.Server:
    return await asyncio.start_server(handler, "127.0.0.1", 0, ssl=tls)


def _port(server: asyncio.Server) -> int:
    return server.sockets[0].getsockname()[1]


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def _client(**kwargs) -> httpx.AsyncClient:
    verify = kwargs.pop("verify", True)
    return httpx.AsyncClient(transport=transport(verify=verify), **kwargs)


async def _chunked(reader, writer, pieces: list[bytes], close: bool = False) -> None:
    await _read_request(reader)
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
    writer.write(head + (b"Connection: close\r\n\r\n" if close else b"\r\n"))
    for piece in pieces:
        writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        await writer.drain()
    writer.write(b"0\r\n\r\n")
    await writer.drain()


async def test_a_chunked_stream_arrives_piece_by_piece_on_one_kept_connection():
    accepted = 0

    async def handler(reader, writer):
        nonlocal accepted
        accepted += 1
        for _ in range(2):
            await _chunked(reader, writer, [b"data: one\n\n", b"data: two\n\n"])

    server = await _serve(handler)
    async with server, _client() as client:
        for _ in range(2):
            async with client.stream("GET", f"http://127.0.0.1:{_port(server)}/") as response:
                pieces = [chunk async for chunk in response.aiter_raw()]
            assert b"".join(pieces) == b"data: one\n\ndata: two\n\n"
    assert accepted == 1


async def test_a_large_body_is_read_whole_through_flow_control():
    body = bytes(range(256)) * 8192  # 2 MiB: the reader pauses and resumes the socket

    async def handler(reader, writer):
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()

    server = await _serve(handler)
    url = f"http://127.0.0.1:{_port(server)}/"
    async with server, _client() as client, client.stream("GET", url) as response:
        received = bytearray()
        async for chunk in response.aiter_raw():
            received += chunk
            await asyncio.sleep(0)  # let data pile up between reads
    assert bytes(received) == body


async def test_tls_with_a_verified_certificate():
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_tls)
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)
    read = asyncio.Event()

    async def handler(reader, writer):
        await _chunked(reader, writer, [b"secret"])
        await read.wait()  # the connection stays up while the client looks at it

    server = await _serve(handler, tls=server_tls)
    url = f"https://localhost:{_port(server)}/"
    async with server, _client(verify=client_tls) as client, client.stream("GET", url) as response:
        assert await response.aread() == b"secret"
        stream = response.extensions["network_stream"]
        assert stream.get_extra_info("ssl_object").version().startswith("TLS")
        read.set()


async def test_an_untrusted_certificate_is_a_connect_error():
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_tls)

    async def handler(reader, writer):
        await _chunked(reader, writer, [b"secret"])

    server = await _serve(handler, tls=server_tls)
    async with server, _client() as client:  # the system's CAs do not know this one
        with pytest.raises(httpx.ConnectError):
            await client.get(f"https://localhost:{_port(server)}/")


async def test_a_silent_server_is_a_read_timeout():
    done = asyncio.Event()

    async def handler(reader, writer):
        await _read_request(reader)
        await done.wait()

    server = await _serve(handler)
    async with server, _client(timeout=httpx.Timeout(5.0, read=0.05)) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.get(f"http://127.0.0.1:{_port(server)}/")
        done.set()


async def test_the_read_timeout_bounds_each_wait_not_the_whole_stream():
    # Six pieces 0.15 s apart take longer than the 0.5 s read timeout; no single wait does.
    silent = asyncio.Event()

    async def handler(reader, writer):
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(6):
            await asyncio.sleep(0.15)
            writer.write(b"1\r\nx\r\n")
            await writer.drain()
        await silent.wait()  # then nothing more: the next wait times out

    server = await _serve(handler)
    url = f"http://127.0.0.1:{_port(server)}/"
    timeout = httpx.Timeout(5.0, read=0.5)
    async with server, _client(timeout=timeout) as client, client.stream("GET", url) as response:
        received = b""
        with pytest.raises(httpx.ReadTimeout):
            async for chunk in response.aiter_raw():
                received += chunk
        assert received == b"x" * 6
        silent.set()


async def test_a_shorter_read_timeout_on_a_kept_connection_is_kept():
    # The connection's timer was armed for a long timeout by the first request; the second
    # request's short one must not wait for it.
    requests = 0
    done = asyncio.Event()

    async def handler(reader, writer):
        nonlocal requests
        await _chunked(reader, writer, [b"first"])
        await _read_request(reader)
        requests += 1
        await done.wait()

    server = await _serve(handler)
    url = f"http://127.0.0.1:{_port(server)}/"
    async with server, _client(timeout=httpx.Timeout(30.0)) as client:
        assert (await client.get(url)).content == b"first"
        async with asyncio.timeout(5):
            with pytest.raises(httpx.ReadTimeout):
                await client.get(url, timeout=httpx.Timeout(30.0, read=0.05))
        assert requests == 1  # the same connection answered both
        done.set()


async def test_a_closed_port_is_a_connect_error():
    server = await _serve(lambda r, w: asyncio.sleep(0))
    port = _port(server)
    server.close()
    await server.wait_closed()
    async with _client() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{port}/")


async def test_a_stream_cut_off_mid_body_is_an_error_not_a_short_reply():
    async def handler(reader, writer):
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        writer.transport.abort()

    server = await _serve(handler)
    async with server, _client() as client:
        with pytest.raises(httpx.TransportError):
            await client.get(f"http://127.0.0.1:{_port(server)}/")


async def test_a_pooled_connection_the_server_closed_is_replaced():
    accepted = 0
    closed = asyncio.Event()

    async def handler(reader, writer):
        nonlocal accepted
        accepted += 1
        await _chunked(reader, writer, [b"ok"])
        writer.close()  # without saying so: the client finds out when it next uses it
        await writer.wait_closed()
        closed.set()

    async def until_readable(stream) -> None:
        while not stream.get_extra_info("is_readable"):
            await asyncio.sleep(0)  # one turn of the loop: the FIN is on its way

    server = await _serve(handler)
    async with server, _client() as client:
        url = f"http://127.0.0.1:{_port(server)}/"
        first = await client.get(url)
        assert first.content == b"ok"
        await closed.wait()
        await asyncio.wait_for(until_readable(first.extensions["network_stream"]), 5)
        assert (await client.get(url)).content == b"ok"
    assert accepted == 2


# --- framing, keep-alive and the pool ---------------------------------------------------------


def test_the_chunked_decoder_takes_a_body_split_anywhere():
    wire = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nTrailer: yes\r\n\r\n"
    for cut in range(len(wire) + 1):
        decoder, buffer, data, done = ChunkedDecoder(), bytearray(), b"", False
        for part in (wire[:cut], wire[cut:]):
            buffer += part
            piece, ended = decoder.feed(buffer)
            data, done = data + piece, done or ended
        assert (data, done, bytes(buffer)) == (b"hello, world", True, b""), cut


@pytest.mark.parametrize(
    "wire", [b"zz\r\n", b"1x\r\n", b"0x1\r\n", b"3\r\nabcX\r\n", b"-1\r\n", b"1" * 5000]
)
def test_the_chunked_decoder_refuses_a_malformed_body(wire):
    with pytest.raises(ValueError):
        ChunkedDecoder().feed(bytearray(wire))


def test_a_response_head_is_read_as_sent():
    head = parse_head(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After:  7 \r\nX-A: 1\r\nx-a: 2")
    assert (head.version, head.status, head.reason) == (b"HTTP/1.1", 429, b"Too Many Requests")
    assert head.header(b"retry-after") == b"7"
    assert head.header(b"x-a") == b"1,2"
    assert not head.close
    assert parse_head(b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive, Close").close
    assert parse_head(b"HTTP/1.0 200 OK").close


@pytest.mark.parametrize(
    "raw", [b"HTTP/2 200 OK", b"HTTP/1.1 2000 OK", b"HTTP/1.1 200 OK\r\nBad Header : x", b"hello"]
)
def test_a_malformed_response_head_is_refused(raw):
    with pytest.raises(ValueError):
        parse_head(raw)


async def _counting_server(respond):
    """A server answering every request on a connection with `respond(n)` (the request's
    number on it); returns the server and a list of accepted connections' request counts."""
    connections: list[int] = []

    async def handler(reader, writer):
        connections.append(0)
        me = len(connections) - 1
        try:
            while True:
                await _read_request(reader)
                connections[me] += 1
                writer.write(respond(connections[me]))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass

    return await _serve(handler), connections


async def test_a_body_by_length_keeps_the_connection():
    server, connections = await _counting_server(
        lambda n: b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    )
    async with server, _client() as client:
        url = f"http://127.0.0.1:{_port(server)}/"
        assert [(await client.get(url)).content for _ in range(3)] == [b"hello"] * 3
    assert connections == [3]


async def test_informational_responses_are_skipped():
    server, _ = await _counting_server(
        lambda n: (
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        )
    )
    async with server, _client() as client:
        response = await client.get(f"http://127.0.0.1:{_port(server)}/")
    assert (response.status_code, response.content) == (200, b"ok")


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ],
    ids=["connection-close", "http-1.0"],
)
async def test_a_connection_the_server_will_close_is_not_reused(answer):
    server, connections = await _counting_server(lambda n: answer)
    async with server, _client() as client:
        url = f"http://127.0.0.1:{_port(server)}/"
        assert [(await client.get(url)).content for _ in range(2)] == [b"ok", b"ok"]
    assert connections == [1, 1]


async def test_a_body_to_the_connections_end_is_read_whole():
    async def handler(reader, writer):
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n\r\nall of ")
        await writer.drain()
        writer.write(b"it")
        writer.close()

    server = await _serve(handler)
    async with server, _client() as client:
        assert (await client.get(f"http://127.0.0.1:{_port(server)}/")).content == b"all of it"


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n1",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
    ],
    ids=["length", "mid-size-line", "mid-chunk"],
)
async def test_a_body_cut_short_is_a_protocol_error(answer):
    async def handler(reader, writer):
        await _read_request(reader)
        writer.write(answer)
        writer.close()

    server = await _serve(handler)
    async with server, _client() as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(f"http://127.0.0.1:{_port(server)}/")


@pytest.mark.parametrize("length", [b"5, 6", b"-1", b"five"])
async def test_a_bad_content_length_is_a_protocol_error_and_frees_the_connection(length):
    server, _ = await _counting_server(
        lambda n: b"HTTP/1.1 200 OK\r\nContent-Length: " + length + b"\r\n\r\nhello"
    )
    pool = transport(limits=httpx.Limits(max_connections=1))
    async with server, httpx.AsyncClient(transport=pool) as client:
        for _ in range(2):  # the only connection was given up, not leaked
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get(f"http://127.0.0.1:{_port(server)}/", timeout=2)


async def test_a_garbled_status_line_is_a_protocol_error():
    server, _ = await _counting_server(lambda n: b"SMTP ready\r\n\r\n")
    async with server, _client() as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(f"http://127.0.0.1:{_port(server)}/")


async def test_a_body_left_unread_closes_its_connection():
    server, connections = await _counting_server(
        lambda n: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n"
    )  # the body never ends
    async with server, _client() as client:
        url = f"http://127.0.0.1:{_port(server)}/"
        for _ in range(2):
            async with client.stream("GET", url) as response:
                async for chunk in response.aiter_raw():
                    assert chunk == b"ab"
                    break
    assert connections == [1, 1]


async def test_a_head_request_and_a_204_read_no_body():
    server, connections = await _counting_server(
        lambda n: (
            b"HTTP/1.1 204 No Content\r\n\r\n"
            if n == 1
            else b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"
        )
    )
    async with server, _client() as client:
        url = f"http://127.0.0.1:{_port(server)}/"
        assert (await client.get(url)).status_code == 204
        assert (await client.head(url)).headers["content-length"] == "99"
    assert connections == [2]


async def test_a_streamed_upload_is_sent_chunked():
    received = asyncio.get_running_loop().create_future()

    async def handler(reader, writer):
        head = await _read_request(reader)
        body = await reader.readuntil(b"0\r\n\r\n")
        received.set_result((head, body))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    async def upload():
        yield b"first,"
        yield b"second"

    server = await _serve(handler)
    async with server, _client() as client:
        await client.post(f"http://127.0.0.1:{_port(server)}/up?x=1", content=upload())
    head, body = await received
    assert head.startswith(b"POST /up?x=1 HTTP/1.1\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert body == b"6\r\nfirst,\r\n6\r\nsecond\r\n0\r\n\r\n"


async def test_the_pool_waits_for_a_free_connection_then_times_out():
    asked, release = asyncio.Event(), asyncio.Event()
    accepted = 0

    async def handler(reader, writer):
        nonlocal accepted
        accepted += 1
        while True:
            try:
                await _read_request(reader)
            except asyncio.IncompleteReadError:
                return
            asked.set()
            await release.wait()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    server = await _serve(handler)
    url = f"http://127.0.0.1:{_port(server)}/"
    client = httpx.AsyncClient(transport=transport(limits=httpx.Limits(max_connections=1)))
    async with server, client:
        first = asyncio.create_task(client.get(url))
        await asyncio.wait_for(asked.wait(), 5)  # the first holds the only connection
        with pytest.raises(httpx.PoolTimeout):
            await client.get(url, timeout=httpx.Timeout(5.0, pool=0.05))
        second = asyncio.create_task(client.get(url))  # waits for the first's connection
        release.set()
        assert [(await first).content, (await second).content] == [b"ok", b"ok"]
    assert accepted == 1  # the second took the first's connection when it came back
