from __future__ import annotations

import asyncio
import os

import pytest

from threads import replies, tasks


@pytest.fixture(autouse=True)
def _test_settings(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    # The demo provider at test speed; tests that need a slow stream say so.
    settings.DEMO_TTFT_MS = 1
    settings.DEMO_TOKENS_PER_S = 5000
    if os.environ.get("REDIS_URL"):
        # A fresh prefix per test keeps groups of earlier tests from leaking in.
        settings.CHANNEL_LAYERS = {
            "default": {
                **settings.CHANNEL_LAYERS["default"],
                "CONFIG": {
                    **settings.CHANNEL_LAYERS["default"]["CONFIG"],
                    "prefix": f"test-{os.getpid()}-{id(settings)}",
                },
            }
        }
    else:
        settings.CHANNEL_LAYERS = {
            "default": {
                "BACKEND": "chatproject.channel_layer.LocalChannelLayer",
                "CONFIG": {"capacity": 1000},
            }
        }


@pytest.fixture(autouse=True)
def _celery_in_process():
    """Tasks run in the test process even when REDIS_URL names a broker: no worker runs
    under pytest, and a queued task would never happen."""
    from chatproject.celery import app

    eager = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = eager


@pytest.fixture(autouse=True)
def _reset_channel_layers():
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


@pytest.fixture
def slow_demo(settings):
    """A demo stream long enough to act on mid-way (about 40 tokens, 50 ms apart)."""
    settings.DEMO_TTFT_MS = 20
    settings.DEMO_TOKENS_PER_S = 20


@pytest.fixture
async def generations():
    """Wait for every reply started during the test before the database goes away."""
    yield
    try:
        await asyncio.wait_for(replies.wait_all(), 20)
        await asyncio.wait_for(tasks.wait_queued(), 20)  # the jobs they queued, too
    except TimeoutError:
        pytest.fail(f"replies still running after the test: {replies._running}")


@pytest.fixture(scope="session", autouse=True)
def _close_worker_thread_connections(django_db_setup):
    """Async tests run ORM calls on asgiref's shared thread (`aget()` and friends) and on
    chatproject.db's threads; close their connections before the test database is dropped
    (PostgreSQL refuses to drop a database in use): set up after it, so torn down before."""
    yield
    from asgiref.sync import SyncToAsync
    from django.db import connections

    from chatproject import db

    SyncToAsync.single_thread_executor.submit(connections.close_all).result()
    if db._threads is not None:
        db._threads.on_each_thread(connections.close_all)
