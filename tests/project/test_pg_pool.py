"""chatproject/pg_pool.py: the pool's checkout check, against the real PostgreSQL server."""

from __future__ import annotations

import os
import select

import pytest

pytestmark = pytest.mark.skipif(
    not os.environ.get("DATABASE_URL"), reason="needs PostgreSQL (DATABASE_URL)"
)

URL = os.environ.get("DATABASE_URL", "").replace("postgres://", "postgresql://", 1)


def _connect():
    import psycopg

    return psycopg.connect(URL, autocommit=True)


def _last_query(conn, pid: int) -> str:
    return conn.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()[0]


def _terminate(conn) -> None:
    """End `conn`'s server process and wait until its goodbye reaches the socket."""
    with _connect() as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [conn.info.backend_pid])
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    assert poller.poll(10_000), "the server did not close the connection"


def test_a_healthy_idle_connection_passes_without_a_round_trip():
    from chatproject.pg_pool import check_connection

    with _connect() as conn, _connect() as observer:
        conn.execute("SELECT 'before the check'")
        check_connection(conn)
        assert _last_query(observer, conn.info.backend_pid) == "SELECT 'before the check'"
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_connection_the_server_ended_fails_the_check():
    import psycopg

    from chatproject.pg_pool import check_connection

    conn = _connect()
    _terminate(conn)
    with pytest.raises(psycopg.OperationalError):
        check_connection(conn)
    conn.close()
    with pytest.raises(psycopg.OperationalError):
        check_connection(conn)  # and a closed one


def test_the_pool_replaces_a_connection_the_server_ended():
    from psycopg_pool import ConnectionPool

    from chatproject.pg_pool import check_connection

    with ConnectionPool(URL, min_size=1, max_size=1, check=check_connection) as pool:
        with pool.connection() as conn:
            first = conn.info.backend_pid
        with pool.connection() as conn:  # the same connection, idle in between
            assert conn.info.backend_pid == first
            dead = conn
        _terminate(dead)
        with pool.connection() as conn:
            assert conn.info.backend_pid != first
            assert conn.execute("SELECT 1").fetchone() == (1,)
