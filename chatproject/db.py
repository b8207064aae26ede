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

Which call goes first: `priority`. A person waits on `Priority.REQUEST` work (a send, a page's
reads), on `Priority.REPLY` work a reply's end waits (its final save), and `Priority.LATER`
work is bookkeeping nobody waits on (partial saves, heartbeats). The threads take the most
urgent call queued, in order of submission within a priority: a send no longer queues
behind the partial saves of every reply streaming at the time.

Called from a sync caller's thread (async_to_sync, as Django's test client does), `fn` runs
on that thread, inside its transaction, as asgiref would run it.
"""

from __future__ import annotations

import enum
import functools
import itertools
import queue
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, cast

from asgiref.sync import AsyncToSync, SyncToAsync
from django.conf import settings
from django.db import connections


class Priority(enum.IntEnum):
    REQUEST = 0  # a person waits for it
    REPLY = 1  # a reply's end waits for it
    LATER = 2  # nobody waits for it


class _Lane(Executor):
    """The executor asyncio hands a call to: one priority of the database threads."""

    def __init__(self, threads: DatabaseThreads, priority: Priority) -> None:
        self.threads = threads
        self.priority = priority

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        return self.threads.submit(self.priority, functools.partial(fn, *args, **kwargs))


class DatabaseThreads:
    """Threads that run the calls submitted to them most urgent first (see the docstring).

    Daemon threads: they hold no work of their own at exit, since a server stops only after
    its replies (and their saves) have ended.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self._queue: queue.PriorityQueue[tuple[int, int, Future[Any], Callable[[], Any]]] = (
            queue.PriorityQueue()
        )
        self._order = itertools.count()
        self.lanes = {priority: _Lane(self, priority) for priority in Priority}
        self._threads = [
            threading.Thread(target=self._work, name=f"db_{i}", daemon=True) for i in range(count)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, priority: Priority, fn: Callable[[], Any]) -> Future[Any]:
        future: Future[Any] = Future()
        self._queue.put((priority, next(self._order), future, fn))
        return future

    def on_each_thread(self, fn: Callable[[], Any]) -> None:
        """Run `fn` once on every thread (closing their connections), and wait for it."""
        barrier = threading.Barrier(self.count)

        def each() -> None:
            try:
                fn()
            finally:
                barrier.wait(timeout=10)  # holds each thread until all have run it

        futures = [self.submit(Priority.REQUEST, each) for _ in range(self.count)]
        for future in futures:
            future.result()

    def _work(self) -> None:
        while True:
            _, _, future, fn = self._queue.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn()
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)


_threads: DatabaseThreads | None = None
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


def database_threads() -> DatabaseThreads:
    """This process's database threads, started on first use."""
    global _threads
    with _lock:
        if _threads is None:
            _threads = DatabaseThreads(db_threads())
        return _threads


def _released(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def call(*args: Any, **kwargs: Any) -> Any:
        release_connections()
        try:
            return func(*args, **kwargs)
        finally:
            release_connections()

    return call


def database_sync_to_async[**P, R](
    func: Callable[P, R], priority: Priority = Priority.REQUEST
) -> Callable[P, Coroutine[Any, Any, R]]:
    """Like asgiref's sync_to_async, on the database threads (see the module's docstring)."""
    released = _released(func)

    @functools.wraps(func)
    async def call(*args: P.args, **kwargs: P.kwargs) -> R:
        if getattr(AsyncToSync.executors, "current", None) is not None:
            runner = SyncToAsync(released, thread_sensitive=True)
        else:
            lane = database_threads().lanes[priority]
            # asgiref only hands its executor to `loop.run_in_executor`, which needs `submit`.
            executor = cast(ThreadPoolExecutor, lane)
            runner = SyncToAsync(released, thread_sensitive=False, executor=executor)
        return await runner(*args, **kwargs)

    return call
