"""chatproject.daphne_tuning: daphne's requests, writes and module lookups, on real sockets."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from daphne import http_protocol
from twisted.internet import main, tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor
from twisted.web import http

from chatproject import daphne_tuning
from chatproject.daphne_tuning import EagerServer


def test_daphne_requests_leave_the_body_to_django():
    """Twisted would parse every form POST into `request.args` (which daphne never reads)
    and look at every POST's Content-Type through the `email` package first."""
    daphne_tuning.skip_twisted_form_parsing()
    daphne_tuning.skip_twisted_form_parsing()  # idempotent: wrapped once
    server = SimpleNamespace(protocol_connected=lambda request: None)
    channel = SimpleNamespace(
        factory=SimpleNamespace(server=server),
        transport=None,
        getPeer=lambda: None,
        getHost=lambda: None,
    )
    request = http_protocol.WebRequest(channel, 0)
    assert request._parsePOSTFormSubmission is False
    assert http.Request(channel)._parsePOSTFormSubmission is True  # Twisted itself unchanged


def test_the_asgi_entry_point_applies_every_adjustment():
    import chatproject.asgi  # noqa: F401 - applies them on import

    assert tcp.Port.transport is EagerServer
    assert http_protocol.http.Request is http.Request
    assert type(http_protocol.http).__name__ == "module"  # not Twisted's deprecation proxy


@pytest.fixture
def connection() -> Iterator[tuple[EagerServer, socket.socket, MemoryReactor]]:
    """A server connection on one end of a real socket pair, its reactor a recording one."""
    ours, peer = socket.socketpair()
    reactor = MemoryReactor()
    port = SimpleNamespace(_realPortNumber=0)
    conn = EagerServer(ours, Protocol(), ("127.0.0.1", 1), port, 0, reactor)
    yield conn, peer, reactor
    ours.close()
    peer.close()


def _read(peer: socket.socket, size: int) -> bytes:
    peer.settimeout(5)
    data = b""
    while len(data) < size:
        data += peer.recv(size - len(data))
    return data


def test_a_write_to_an_idle_socket_is_sent_without_the_reactor(connection):
    conn, peer, reactor = connection
    conn.write(b"event: delta\n\n")
    conn.writeSequence([b"e\r\n", b"frame", b"\r\n"])
    assert conn not in reactor.getWriters()  # never registered for a writable event
    assert _read(peer, 24) == b"event: delta\n\ne\r\nframe\r\n"


def test_what_the_socket_cannot_take_waits_in_order_with_later_writes(connection):
    conn, peer, reactor = connection
    conn.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    big = bytes(range(256)) * 4096  # 1 MiB: more than the socket takes at once
    conn.write(big)
    assert conn in reactor.getWriters()  # the rest is Twisted's to send when it can
    peer.settimeout(5)
    received = bytearray(peer.recv(1 << 20))  # the socket has room again, the buffer waits
    conn.write(b"after")  # so this goes behind the buffer, not ahead of it
    conn.writeSequence([b"and ", b"more"])
    while len(received) < len(big) + 13:
        if conn in reactor.getWriters():  # what the reactor does when the socket has room
            assert conn.doWrite() is None
        received += peer.recv(1 << 20)
    assert bytes(received) == big + b"afterand more"
    conn.write(b"idle again")
    assert conn not in reactor.getWriters()
    assert _read(peer, 10) == b"idle again"


def test_a_lost_peer_is_reported_by_twisted_as_before(connection):
    conn, peer, reactor = connection
    peer.close()
    conn.write(b"nobody reads this")  # the send fails: Twisted's buffered path takes it
    assert conn in reactor.getWriters()
    assert conn.doWrite() is main.CONNECTION_LOST


def test_writes_after_close_is_asked_wait_for_twisted(connection):
    conn, peer, reactor = connection
    conn.loseConnection()
    conn.write(b"last words")
    assert conn in reactor.getWriters()
    ended = conn.doWrite()  # sends them, then closes as Twisted does
    assert _read(peer, 10) == b"last words"
    assert ended is main.CONNECTION_DONE
