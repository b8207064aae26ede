"""chatproject.db: database calls from long-lived async code."""

from __future__ import annotations

import threading

import pytest
from asgiref.sync import async_to_sync
from django.db import connection

from chatproject.db import (
    DatabaseThreads,
    Priority,
    database_sync_to_async,
    release_connections,
)
from threads.models import Organization

pytestmark = [pytest.mark.django_db(transaction=True)]


def _where() -> str:
    Organization.objects.exists()  # uses this thread's connection
    return threading.current_thread().name


async def test_calls_run_on_the_database_threads():
    name = await database_sync_to_async(_where)()
    assert name.startswith("db_")


def test_a_sync_caller_keeps_its_own_thread_and_transaction():
    """Django's test client and async_to_sync callers: the call joins the caller's thread,
    so it sees the caller's transaction (closing its connection there would break it)."""
    here = threading.current_thread().name

    async def call() -> str:
        return await database_sync_to_async(_where)()

    assert async_to_sync(call)() == here


def test_connections_are_released_after_use_but_not_inside_a_transaction(settings):
    connection.ensure_connection()
    connection.close_at = 0  # as with CONN_MAX_AGE 0 (the PostgreSQL pool): due for closing
    with pytest.MonkeyPatch.context() as patch:
        closed = []
        patch.setattr(connection, "close", lambda: closed.append(True))
        from django.db import transaction

        with transaction.atomic():
            release_connections()
        assert closed == []
        release_connections()
        assert closed == [True]


def test_the_most_urgent_queued_call_runs_first():
    """A send does not queue behind partial saves: with the threads busy, queued calls run
    by priority, and in order of submission within one."""
    threads = DatabaseThreads(1)
    release = threading.Event()
    ran: list[str] = []
    blocker = threads.submit(Priority.LATER, release.wait)
    queued = [
        threads.submit(Priority.LATER, lambda: ran.append("later 1")),
        threads.submit(Priority.REPLY, lambda: ran.append("reply")),
        threads.submit(Priority.LATER, lambda: ran.append("later 2")),
        threads.submit(Priority.REQUEST, lambda: ran.append("request")),
    ]
    release.set()
    blocker.result(timeout=5)
    for future in queued:
        future.result(timeout=5)
    assert ran == ["request", "reply", "later 1", "later 2"]


def test_errors_reach_the_caller_and_the_thread_goes_on():
    threads = DatabaseThreads(1)

    def fail() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        threads.submit(Priority.REQUEST, fail).result(timeout=5)
    assert threads.submit(Priority.REQUEST, lambda: 42).result(timeout=5) == 42


def test_on_each_thread_runs_once_on_every_thread():
    threads = DatabaseThreads(3)
    names: list[str] = []
    threads.on_each_thread(lambda: names.append(threading.current_thread().name))
    assert sorted(names) == ["db_0", "db_1", "db_2"]


async def test_background_calls_run_on_the_database_threads_too():
    name = await database_sync_to_async(_where, Priority.LATER)()
    assert name.startswith("db_")
