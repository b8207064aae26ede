"""The check the PostgreSQL connection pool makes before handing out a connection.

Django gives the pool psycopg_pool's own check when CONN_HEALTH_CHECKS is on: an empty query,
so one more round trip on every checkout. Every database call of a reply checks a connection
out (a send, a partial save, the final save), and under load each round trip also waits for
the GIL behind the streams: on the bench at 25 streams a send's checkout and first query took
1.7 ms of its 5-6 ms.

A connection the server has given up on (a restart, `pg_terminate_backend`, an idle timeout)
has the server's goodbye waiting on its socket, an error message and the end of the stream,
while a healthy idle connection has nothing to read. So this check looks at the socket first
(a poll with no wait, no I/O) and makes psycopg_pool's round trip only when something is
there; that round trip raises for a dead connection, and the pool then discards it and
hands out another.
"""

from __future__ import annotations

import select
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool


def check_connection(conn: Any) -> None:
    """Raise if `conn` is not fit to hand out (the pool's `check` callback)."""
    if conn.closed or conn.broken:
        raise psycopg.OperationalError("the connection is closed")
    if _has_input(conn.fileno()):
        # Something arrived while it sat in the pool: the server's goodbye, or a notice
        # (which the empty query consumes). The full check tells them apart.
        ConnectionPool.check_connection(conn)


def _has_input(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLPRI)
    return bool(poller.poll(0))
