"""The `fake_provider` pytest fixture: every vendor's streaming API on 127.0.0.1.

Use it from any test suite by importing the fixtures into that suite's conftest.py:

    from tests.fake_server import fake_provider, fake_provider_server  # noqa: F401

The server (providers/fake/) runs in a background thread with its own event loop, started
once per session on a free port, so it serves sync tests, async tests and Django's own
threads alike. `fake_provider` resets it before and after each test and yields a
`FakeProvider` handle:

    fake.url                         "http://127.0.0.1:PORT"
    fake.base_url("openai")          base URL for a provider id (registry ids)
    fake.provider_settings()         dict shaped like settings.LLM_PROVIDERS, dummy keys;
                                     `settings.LLM_PROVIDERS = fake.provider_settings()`
    fake.config("openai", read_timeout_s=0.2)   a ProviderConfig pointing at the fake
    fake.script("openai", model=None, times=1, **controls)
                                     queue a scenario for the next matching request(s);
                                     controls are documented in providers/fake/__init__.py, e.g.
                                     status=429, retry_after="3", fault="hang", tokens=5
    fake.requests                    recorded requests, oldest first: .path, .query,
                                     .headers (lower-case names), .json, .vendor, .model,
                                     .client_closed (the client hung up first),
                                     .connection (the server's connection number, from 1)
    fake.last_request                the newest one
    await request.finished_async()   wait until the server is done with a request (no sleep);
                                     request.wait_finished() from sync code
    fake.reset()                     forget requests and scenarios

Models can also carry controls in a suffix (`gpt-4o-mini~429~retry=4`), and any HTTP client
can send `x-fake-*` headers; see providers/fake/__init__.py for the grammar.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from providers.base import ChatRequest, Event, ProviderConfig, ProviderError, Turn
from providers.fake import FakeProviderServer, RecordedRequest, base_url, provider_settings


class FakeProviderThread:
    """Runs a FakeProviderServer on its own loop in a daemon thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = FakeProviderServer()
        self._host, self._port = host, port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="fake-provider", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self.server.start(self._host, self._port))
        except BaseException as exc:  # reported to start() in the other thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.close()

    def stop(self) -> None:
        future = asyncio.run_coroutine_threadsafe(self.server.close(), self._loop)
        future.result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


class FakeProvider:
    """What a test holds: addresses, scripting and the recorded requests."""

    def __init__(self, thread: FakeProviderThread) -> None:
        self._server = thread.server

    @property
    def url(self) -> str:
        return self._server.url

    def base_url(self, provider_id: str) -> str:
        return base_url(self.url, provider_id)

    def provider_settings(self, api_key: str = "fake-key") -> dict[str, dict[str, str]]:
        return provider_settings(self.url, api_key)

    def config(
        self, provider_id: str, api_key: str = "fake-key", **overrides: Any
    ) -> ProviderConfig:
        return ProviderConfig(api_key=api_key, base_url=self.base_url(provider_id), **overrides)

    def script(
        self, vendor: str, model: str | None = None, times: int = 1, **controls: Any
    ) -> None:
        self._server.script(vendor, model, times, **controls)

    @property
    def requests(self) -> list[RecordedRequest]:
        return list(self._server.requests)

    @property
    def last_request(self) -> RecordedRequest:
        return self._server.requests[-1]

    def reset(self) -> None:
        self._server.reset()


@pytest.fixture(scope="session")
def fake_provider_server() -> Iterator[FakeProviderThread]:
    thread = FakeProviderThread()
    thread.start()
    yield thread
    thread.stop()


@pytest.fixture
def fake_provider(fake_provider_server: FakeProviderThread) -> Iterator[FakeProvider]:
    handle = FakeProvider(fake_provider_server)
    handle.reset()
    yield handle
    handle.reset()


# --- Helpers for adapter tests ------------------------------------------------------------


async def collect(stream: AsyncIterator[Event]) -> list[Event]:
    """Every event of a stream that must succeed."""
    return [event async for event in stream]


async def failure(stream: AsyncIterator[Event]) -> tuple[list[Event], ProviderError]:
    """The events before a stream's ProviderError, and the error; fails if none is raised."""
    events: list[Event] = []
    try:
        async for event in stream:
            events.append(event)
    except ProviderError as exc:
        return events, exc
    raise AssertionError(f"expected a ProviderError, got {events!r}")


def chat(
    model: str, *texts: str, system: str = "", provider: str = "", **options: Any
) -> ChatRequest:
    """A ChatRequest whose turns alternate user/assistant, starting with the user."""
    texts = texts or ("Hi",)
    turns = tuple(
        Turn(role="user" if i % 2 == 0 else "assistant", content=t) for i, t in enumerate(texts)
    )
    return ChatRequest(provider=provider, model=model, turns=turns, system=system, **options)
