"""Database calls from long-lived async code.

Under ASGI, Django closes a request thread's connections when the request ends. Code that
outlives requests (a generation streaming for minutes on asgiref's shared thread) or that
should give its connection back before a long response (a send that then streams its reply)
needs the same care around each call: `database_sync_to_async` runs the function on a worker
thread and, before and after, closes connections that are obsolete, broken or (with the
PostgreSQL pool, where CONN_MAX_AGE is 0) done with, which returns them to the pool.

It is Channels' helper of the same name, except that it leaves a connection alone inside a
transaction (the one a test case wraps around each test), where closing it would break the
transaction.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import SyncToAsync
from django.db import connections


def release_connections() -> None:
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close_if_unusable_or_obsolete()


class DatabaseSyncToAsync(SyncToAsync):
    def thread_handler(self, loop: Any, *args: Any, **kwargs: Any) -> Any:
        release_connections()
        try:
            return super().thread_handler(loop, *args, **kwargs)
        finally:
            release_connections()


# Used like asgiref's sync_to_async: as a call or as a decorator.
database_sync_to_async = DatabaseSyncToAsync
