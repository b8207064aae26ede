"""Database calls from async code that outlives requests or holds a response open.

`database_sync_to_async(fn)` runs `fn` on one of a few threads kept for the database, not on
the request's own thread (Django gives each ASGI request a new thread, hence a new
connection) nor on asgiref's single shared thread (which every `aget()` in the process also
queues on). Around each call it closes connections that are obsolete, broken or, with the
PostgreSQL pool (CONN_MAX_AGE 0), done with, which hands them back to the pool; inside a
transaction (the one a test case wraps around each test) it leaves them alone.

How many threads: `DB_THREADS`; by default one for SQLite, which takes one writer at a time
anyway (several threads would only queue on its lock, sleeping in its busy handler), and
four for PostgreSQL (more only queue longer for the GIL: measured with 2, 4 and 8).

Called from a sync caller's thread (async_to_sync, as Django's test client does), `fn` runs
on that thread, inside its transaction, as asgiref would run it.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import AsyncToSync, SyncToAsync
from django.conf import settings
from django.db import connections

_executor: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def release_connections() -> None:
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close_if_unusable_or_obsolete()


def db_threads() -> int:
    configured = getattr(settings, "DB_THREADS", 0)
    if configured:
        return configured
    return 1 if connections["default"].vendor == "sqlite" else 4


def _db_executor() -> ThreadPoolExecutor:
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=db_threads(), thread_name_prefix="db")
        return _executor


def _released(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def call(*args: Any, **kwargs: Any) -> Any:
        release_connections()
        try:
            return func(*args, **kwargs)
        finally:
            release_connections()

    return call


def database_sync_to_async[**P, R](func: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """Like asgiref's sync_to_async, on the database threads (see the module's docstring)."""
    released = _released(func)

    @functools.wraps(func)
    async def call(*args: P.args, **kwargs: P.kwargs) -> R:
        if getattr(AsyncToSync.executors, "current", None) is not None:
            runner = SyncToAsync(released, thread_sensitive=True)
        else:
            runner = SyncToAsync(released, thread_sensitive=False, executor=_db_executor())
        return await runner(*args, **kwargs)

    return call
