"""chatproject.request_threads: each request's sync work on a borrowed thread of its own."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from django.core.signals import request_finished
from django.http import HttpRequest, HttpResponse
from django.test import override_settings
from django.urls import path

from chatproject.request_threads import PooledThreadsASGIHandler, RequestThreads

seen: list[tuple[str, int]] = []  # (what ran, on which thread)


def sync_view(request: HttpRequest) -> HttpResponse:
    seen.append(("view", threading.get_ident()))
    names.add(threading.current_thread().name)
    return HttpResponse("ok")


names: set[str] = set()
urlpatterns = [path("sync/", sync_view)]


def _on_finished(**kwargs: Any) -> None:
    seen.append(("finished", threading.get_ident()))


@pytest.fixture
def handler():
    seen.clear()
    names.clear()
    request_finished.connect(_on_finished)
    with override_settings(ROOT_URLCONF=__name__):
        yield PooledThreadsASGIHandler()
    request_finished.disconnect(_on_finished)


async def _get(handler: PooledThreadsASGIHandler, path: str) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    received = asyncio.Event()  # the client never goes away during these requests

    async def receive() -> dict[str, Any]:
        if not received.is_set():
            received.set()
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
    }
    await handler(scope, receive, send)
    return sent


async def test_a_request_s_sync_work_runs_on_one_borrowed_thread_then_the_next_request_s(
    handler,
):
    first = await _get(handler, "/sync/")
    assert first[0]["status"] == 200
    (_, view_thread), (_, close_thread) = seen
    assert view_thread == close_thread  # the view and response.close(): one thread
    assert view_thread != threading.get_ident() and names == {"request_0"}
    await _get(handler, "/sync/")
    assert seen[2:] == [("view", view_thread), ("finished", view_thread)]  # reused, not new
    assert len(handler.threads.idle) == 1


async def test_concurrent_requests_never_share_a_thread(handler):
    await asyncio.gather(*(_get(handler, "/sync/") for _ in range(5)))
    by_thread: dict[int, list[str]] = {}
    for what, thread in seen:
        by_thread.setdefault(thread, []).append(what)
    assert all(whats == ["view", "finished"] for whats in by_thread.values()), by_thread
    assert len(handler.threads.idle) == len(by_thread) == 5


def test_only_so_many_idle_threads_are_kept():
    threads = RequestThreads(keep_idle=2)
    lent = [threads.borrow() for _ in range(3)]
    assert len({id(e) for e in lent}) == 3
    for executor in lent:
        threads.give_back(executor)
    assert threads.idle == lent[:2]
    assert lent[2]._shutdown  # the third's thread ends on its own
    assert threads.borrow() is lent[1]


async def test_a_thread_still_busy_for_a_request_that_ended_is_not_lent_again():
    """A client that went away mid-view: its sync call still runs, and the next request
    must not wait behind it."""
    threads = RequestThreads()
    executor = threads.borrow()
    release = threading.Event()
    call = executor.submit(release.wait, 5)
    threads.give_back(executor)
    assert threads.idle == [] and executor._shutdown
    release.set()
    assert call.result(timeout=5) is True  # the call itself still ran to its end
    done = threads.borrow()
    await asyncio.get_running_loop().run_in_executor(done, lambda: None)  # as asgiref calls
    threads.give_back(done)
    assert threads.idle == [done]  # an idle one goes back to the pool


async def test_websockets_are_not_django_s():
    with pytest.raises(ValueError, match="websocket"):
        await PooledThreadsASGIHandler()({"type": "websocket"}, None, None)
