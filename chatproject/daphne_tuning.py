"""Three adjustments to how daphne and Twisted serve requests, each cutting CPU per request or
per streamed frame; chatproject.asgi applies them on import (`apply()`).

Each has a measured cost behind it (docs/benchmarks.md) and changes no behaviour an HTTP
client can see: the bytes on the wire, their order, flow control and error handling stay
Twisted's.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

from daphne import http_protocol
from twisted.internet import tcp
from twisted.python.deprecate import _ModuleProxy


def skip_twisted_form_parsing() -> None:
    """Stop Twisted parsing every POST body under daphne as a form.

    Twisted's `Request` reads a POST's Content-Type through the `email` package (about
    0.3 ms of CPU per request, 2 % of a streamed reply's) and parses an urlencoded or
    multipart body into `request.args`, which daphne never reads: it hands the raw body to
    Django, which parses it again. Twisted's own switch for this is the request's
    `parsePOSTFormSubmission` argument; daphne does not pass it, so its requests get it here.
    """
    WebRequest = http_protocol.WebRequest
    init = WebRequest.__init__
    if getattr(init, "skips_form_parsing", False):
        return

    @functools.wraps(init)
    def __init__(self: http_protocol.WebRequest, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("parsePOSTFormSubmission", False)
        init(self, *args, **kwargs)

    __init__.skips_form_parsing = True  # type: ignore[attr-defined]
    WebRequest.__init__ = __init__  # type: ignore[method-assign]


def send_at_once() -> None:
    """Make daphne's TCP connections send a write at once when nothing is waiting to go
    (see `EagerServer`)."""
    tcp.Port.transport = EagerServer


def read_twisted_http_directly() -> None:
    """Let daphne reach `twisted.web.http` without its deprecation proxy.

    Twisted wraps that module in a proxy whose Python-level `__getattribute__` runs on every
    attribute read; daphne reads `http.Request` once per frame it writes (about 1 % of a
    streamed reply's CPU). Warnings for the module's deprecated names are Twisted's to give
    to code that uses them; daphne uses none.
    """
    proxy = http_protocol.http
    if isinstance(proxy, _ModuleProxy):
        http_protocol.http = object.__getattribute__(proxy, "_module")


def apply() -> None:
    skip_twisted_form_parsing()
    send_at_once()
    read_twisted_http_directly()


class EagerServer(tcp.Server):
    """A server connection whose writes go to the socket at once when nothing is
    waiting to be sent, as asyncio's transports do.

    Twisted's connections only buffer a write and ask the reactor to report the socket
    writable; the send happens on a later turn of the loop, through the reactor's
    logging context, and the socket is registered and unregistered for writing around
    it (two `epoll_ctl` calls). A streamed reply writes a frame every 40 ms, each to an
    idle socket; this and `read_twisted_http_directly` took a streamed reply's CPU from
    20.7 to 18.7 ms (25 streams, docs/benchmarks.md). Whatever the socket does not take now
    (a full send buffer, an error) goes through Twisted's own buffered path, which keeps
    the order, pauses producers and reports a lost connection as before.
    """

    def write(self, data: bytes) -> None:
        if self._idle():
            data = self._send_now(data)
        super().write(data)

    def writeSequence(self, iovec: Iterable[bytes]) -> None:
        if self._idle():
            super().write(self._send_now(b"".join(iovec)))
        else:
            super().writeSequence(iovec)

    def _idle(self) -> bool:
        return bool(
            self.connected
            and not self.TLS  # startTLS: its bytes go through the TLS protocol first
            and not self.disconnecting
            and not self._writeDisconnected
            and not self._tempDataLen
            and self.offset == len(self.dataBuffer)
        )

    def _send_now(self, data: bytes) -> bytes:
        """Send what the socket takes now; return the rest."""
        try:
            sent = self.socket.send(data)
        except OSError:  # would block, interrupted, or lost: Twisted's path handles it
            return data
        return data[sent:]
