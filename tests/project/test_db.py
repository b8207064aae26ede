"""chatproject.db: database calls from long-lived async code."""

from __future__ import annotations

import threading

import pytest
from asgiref.sync import async_to_sync
from django.db import connection

from chatproject.db import database_sync_to_async, release_connections
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
