"""HTTP/1.1 on the wire, for providers/transport.py: a response's head, and chunked bodies.

Pure functions of bytes (no I/O), so each rule is tested on its own, split at every byte.
"""

from __future__ import annotations

import re

# A chunk's size line (with its extensions) or a trailer line may not be longer than this.
MAX_LINE = 4 * 1024
# A chunk's size in hex, then optional extensions (`;name=value`), which nobody needs.
_CHUNK_SIZE = re.compile(rb"[ \t]*([0-9A-Fa-f]+)[ \t]*(?:;.*)?")


class Head:
    """A response's status line and headers; `close`: the server ends the connection after
    this response (HTTP/1.0, or `Connection: close`)."""

    __slots__ = ("close", "headers", "reason", "status", "version")

    def __init__(
        self, version: bytes, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]
    ):
        self.version, self.status, self.reason, self.headers = version, status, reason, headers
        tokens = b",".join(v for n, v in headers if n.lower() == b"connection").lower()
        self.close = version != b"HTTP/1.1" or b"close" in tokens

    def header(self, name: bytes) -> bytes | None:
        values = [v for n, v in self.headers if n.lower() == name]
        return b",".join(values) if values else None


def parse_head(raw: bytes) -> Head:
    """The status line and headers (without the blank line that ends them)."""
    lines = raw.split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    code, _, reason = rest.partition(b" ")
    if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise ValueError(f"not an HTTP/1.1 status line: {lines[0][:80]!r}")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise ValueError(f"not a header line: {line[:80]!r}")
        headers.append((name, value.strip(b" \t")))
    return Head(version, int(code), reason, headers)


class ChunkedDecoder:
    """A chunked body (RFC 9112 7.1) taken from a buffer as it fills: `feed` consumes what
    it can of `buffer` and returns the data it decoded, and whether the body has ended."""

    def __init__(self) -> None:
        self._left = 0  # bytes of the current chunk still to come
        self._state = "size"  # size, data, data_end, trailer

    def feed(self, buffer: bytearray) -> tuple[bytes, bool]:
        out: list[bytes] = []
        while buffer:
            state = self._state
            if state == "data":
                take = min(self._left, len(buffer))
                out.append(bytes(buffer[:take]))
                del buffer[:take]
                self._left -= take
                if self._left == 0:
                    self._state = "data_end"
            elif state == "data_end":
                if len(buffer) < 2:
                    break
                if buffer[:2] != b"\r\n":
                    raise ValueError("a chunk does not end with CRLF")
                del buffer[:2]
                self._state = "size"
            else:
                end = buffer.find(b"\r\n")
                if end < 0:
                    if len(buffer) > MAX_LINE:
                        raise ValueError("a chunk size or trailer line is too long")
                    break
                line = bytes(buffer[:end])
                if state == "trailer":
                    del buffer[: end + 2]
                    if not line:  # the blank line after the trailers: the body's end
                        return b"".join(out), True
                    continue
                size = _CHUNK_SIZE.fullmatch(line)
                if size is None:
                    raise ValueError(f"not a chunk size: {line[:40]!r}")
                left = int(size[1], 16)
                start, stop = end + 2, end + 2 + left
                if left and len(buffer) >= stop + 2 and buffer[stop : stop + 2] == b"\r\n":
                    # The usual case, a whole chunk in the buffer: one step, not three.
                    out.append(bytes(buffer[start:stop]))
                    del buffer[: stop + 2]
                    continue
                del buffer[:start]
                self._left = left
                self._state = "data" if left else "trailer"
        return b"".join(out), False
