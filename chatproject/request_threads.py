"""Django's ASGI handler, with each request's thread for sync work borrowed from a pool.

Django runs every HTTP request inside asgiref's `ThreadSensitiveContext`, so that the
request's sync code (sync views and middleware, and always `response.close()`, which sends
`request_finished`) runs on a thread of its own. By default that thread is new for every
request, and a second one is started at the request's end to join the first: two thread
starts per request, even for an async view (A/B runs at 25 streams: 16.7 ms of CPU per
streamed reply with them, 15.0 without; docs/benchmarks.md). Here a request borrows a
one-thread executor and hands it back at its end. While the request runs, the thread is its
alone, so what thread-sensitive code relies on (one thread for all of a request's sync work,
its database connection included) holds as before. Needs asgiref 3.13's
`ThreadSensitiveContext(executor=...)`.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from asgiref.sync import ThreadSensitiveContext
from django.core.handlers.asgi import ASGIHandler

# Idle executors kept for the next requests; past this, a returned one is shut down (its
# thread ends on its own, nobody waits for it).
KEEP_IDLE = 64


class RequestExecutor(ThreadPoolExecutor):
    """A one-thread executor that knows whether a call is still queued or running on it."""

    def __init__(self) -> None:
        super().__init__(max_workers=1, thread_name_prefix="request")
        self.unfinished: set[Future[Any]] = set()  # set.add/discard: atomic across threads

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future = super().submit(fn, *args, **kwargs)
        self.unfinished.add(future)
        future.add_done_callback(self.unfinished.discard)
        return future


class RequestThreads:
    """One-thread executors, each lent to one request at a time.

    An executor comes back busy when its request ended while a sync call of its own was
    still running (the client went away mid-view): it is not lent again, or the next request
    would wait for that call. It is shut down instead; its thread ends after the call.
    """

    def __init__(self, keep_idle: int = KEEP_IDLE) -> None:
        self.keep_idle = keep_idle
        self.idle: list[RequestExecutor] = []

    def borrow(self) -> RequestExecutor:
        try:
            return self.idle.pop()
        except IndexError:
            return RequestExecutor()

    def give_back(self, executor: RequestExecutor) -> None:
        if not executor.unfinished and len(self.idle) < self.keep_idle:
            self.idle.append(executor)
        else:
            executor.shutdown(wait=False)


class PooledThreadsASGIHandler(ASGIHandler):
    """Django's ASGIHandler; only where a request's sync work runs differs (see above)."""

    def __init__(self) -> None:
        super().__init__()
        self.threads = RequestThreads()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        executor = self.threads.borrow()
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        finally:
            self.threads.give_back(executor)
