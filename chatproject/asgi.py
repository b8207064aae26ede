"""ASGI entry point: HTTP through Django, WebSockets through Channels."""

from __future__ import annotations

import gc
import os

import django
from channels.auth import AuthMiddlewareStack
from channels.routing import ProtocolTypeRouter, URLRouter
from channels.security.websocket import AllowedHostsOriginValidator
from django.core.signals import request_started
from django.db import close_old_connections, reset_queries
from django.urls import get_resolver

from chatproject import daphne_tuning
from chatproject.celery import app as celery_app
from chatproject.request_threads import PooledThreadsASGIHandler

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")
# Initialise Django before importing consumers and models (AppRegistryNotReady otherwise),
# as get_asgi_application() does, with Django's handler on pooled threads.
django.setup(set_prefix=False)
django_asgi_app = PooledThreadsASGIHandler()

from threads.routing import websocket_urlpatterns  # noqa: E402


def drop_request_start_hooks() -> None:
    """Disconnect Django's two `request_started` receivers, which only WSGI needs.

    They close a worker thread's stale connection and clear its query log before a request.
    Under ASGI a request's sync work runs on a thread lent to it (chatproject.request_threads),
    where `request_finished` already closed at the last request's end what was obsolete or
    broken (and a reused connection is health-checked on its first use); the query log, kept
    only with DEBUG, is bounded by Django. But `Signal.asend` still hops to that thread to run
    them, before every view, where a send's first token waits.
    """
    request_started.disconnect(reset_queries)
    request_started.disconnect(close_old_connections)


drop_request_start_hooks()


daphne_tuning.apply()


def freeze_startup_objects() -> None:
    """Load every view and Celery's machinery now, and keep what start-up made out of the
    garbage collector's way.

    A full collection walks every object the process holds: after start-up that is Django,
    the URL configuration, the API's schemas and the catalog, none of which will ever be
    garbage, and one such collection stopped every stream for 100-130 ms at 25 streams.
    `gc.freeze()` moves them to a generation no collection looks at; full collections then
    walk only what the process made since (about 30 ms). Loading the URL configuration here,
    rather than on the first request, makes its objects part of that. Celery's first job
    would otherwise load its app and message machinery then (20-120 ms, on a database thread
    that sends wait for); this loads it without connecting to the broker.
    """
    get_resolver().url_patterns  # noqa: B018 - imports every view, the API and its schemas
    celery_app.finalize(auto=True)
    celery_app.amqp.producer_pool  # noqa: B018 - builds the producer machinery, no connection
    gc.collect()
    gc.freeze()


application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # WebSockets carry no CSRF token: the origin check is the CSRF defence.
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    }
)

freeze_startup_objects()
