"""Browser tests: the real app under daphne, driven by Debian's headless Chromium.

They skip when /usr/bin/chromium is missing, unless CI is set, where they fail instead.
Each session starts one app (temp SQLite, demo user) and one fake vendor server; the
demo provider is paced so there is time to act mid-stream.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from threads.management.commands.measure_page import CHROMIUM, launch

PACED = {"DEMO_TTFT_MS": "300", "DEMO_TOKENS_PER_S": "15", "STREAM_FRAME_INTERVAL_MS": "40"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing and CI is set: browser tests must run in CI")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    return CHROMIUM


@pytest.fixture(scope="package")
def fake_vendor() -> Iterator[Any]:
    from threads.smoke import FakeProvider

    with FakeProvider() as fake:
        yield fake


@pytest.fixture(scope="package")
def live_app(chromium_path: str, fake_vendor: Any) -> Iterator[Any]:
    from threads.smoke import AppServer

    env = {
        "DEBUG": "true",
        **PACED,
        **fake_vendor.app_env(),
        # Quick retries so a scripted 429 shows "hold on" and then answers.
        "LLM_BACKOFF_FIRST_S": "0.5",
        "LLM_RETRY_AFTER_MAX_S": "3",
    }
    with AppServer(env=env) as app:
        yield app


# Package scope, not session: Playwright's sync API runs an event loop in the main thread
# while it is open, and the asyncio tests collected after this package need that thread free.
@pytest.fixture(scope="package")
def browser(chromium_path: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch(p)
        yield browser
        browser.close()


@pytest.fixture
def context(browser: Any, live_app: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 360, "height": 740})
    context.set_default_timeout(15_000)
    page = context.new_page()
    page.goto(f"{live_app.url}/accounts/login/")
    page.fill("#id_username", "demo")
    page.fill("#id_password", "demo-password")
    page.click("button[type=submit]")
    page.wait_for_selector("main.chat")
    page.close()
    yield context
    context.close()


@pytest.fixture
def page(context: Any, live_app: Any) -> Any:
    """A new chat, open and connected."""
    page = context.new_page()
    page.goto(f"{live_app.url}/")
    page.click("button.new-thread")
    page.wait_for_selector("#compose-content")
    page.wait_for_load_state("networkidle")
    return page
