"""chatproject.asgi: what the ASGI entry point changes in Django's request handling."""

from __future__ import annotations

from django.core.signals import request_finished, request_started
from django.db import close_old_connections

from chatproject.asgi import drop_request_start_hooks


def test_no_thread_hop_before_the_view():
    """With no receiver left, `request_started.asend` returns at once: no thread is started
    for it before every view (the test client reconnects one receiver, so drop them again)."""
    drop_request_start_hooks()
    assert not request_started.has_listeners()


def test_the_request_thread_still_closes_its_connections_at_the_end():
    drop_request_start_hooks()
    assert close_old_connections in [ref() for _, ref, *_ in request_finished.receivers]


def test_start_up_loads_every_view_and_freezes_what_it_made():
    """A full garbage collection then walks only what the process made after start-up."""
    import gc
    import sys

    from chatproject.celery import app as celery_app

    assert "threads.api" in sys.modules and "threads.views" in sys.modules
    assert celery_app.finalized
    assert gc.get_freeze_count() > 10_000
