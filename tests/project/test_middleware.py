"""Django's middleware on the event loop (chatproject/middleware.py) still does its job."""

from __future__ import annotations

from unittest import mock

import pytest
from asgiref.sync import SyncToAsync, sync_to_async
from django.test import AsyncClient, override_settings
from django.urls import reverse

from chatproject.middleware import check_security_middleware
from tests.factories import make_org, make_thread, make_user
from threads.models import Message

pytestmark = [pytest.mark.django_db(transaction=True)]


async def test_security_and_framing_headers_are_set():
    response = await AsyncClient().get(reverse("login"))
    assert response.status_code == 200
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"


async def test_a_login_is_saved_in_the_session_and_lets_the_next_request_in():
    await sync_to_async(make_user)("alice", await sync_to_async(make_org)())
    client = AsyncClient()
    response = await client.post(reverse("login"), {"username": "alice", "password": "password"})
    assert response.status_code == 302
    assert "sessionid" in response.cookies
    page = await client.get(reverse("threads:index"), follow=True)
    assert page.status_code == 200
    assert b"New chat" in page.content and b'name="password"' not in page.content


async def test_a_form_post_without_its_csrf_token_is_refused():
    org = await sync_to_async(make_org)()
    user = await sync_to_async(make_user)("alice", org)
    thread = await sync_to_async(make_thread)(org, user)
    client = AsyncClient(enforce_csrf_checks=True)
    await client.aforce_login(user)
    response = await client.post(
        reverse("threads:send", args=[thread.code]),
        {"content": "Hi", "model": "demo:demo-chat"},
    )
    assert response.status_code == 403
    assert not await Message.objects.aexists()


async def test_a_request_makes_no_thread_trips_for_middleware():
    """Stock Django makes about a dozen (two per sync-only middleware); the view's own trip
    and the request signals remain."""
    calls = 0
    real_call = SyncToAsync.__call__

    async def counting(self, *args, **kwargs):
        nonlocal calls
        calls += 1
        return await real_call(self, *args, **kwargs)

    client = AsyncClient()
    await client.get(reverse("login"))  # warm up: URL resolver, templates
    with mock.patch.object(SyncToAsync, "__call__", counting):
        response = await client.get(reverse("login"))
    assert response.status_code == 200
    assert calls <= 4, f"{calls} trips to a thread"


def test_the_deploy_check_wants_the_security_middleware_or_a_subclass():
    assert check_security_middleware() == []
    with override_settings(MIDDLEWARE=["chatproject.middleware.SessionMiddleware"]):
        ids = [message.id for message in check_security_middleware()]
    assert ids == ["chatproject.W001", "chatproject.W002", "chatproject.W003"]


async def test_auser_loads_the_user_on_the_database_threads(monkeypatch):
    """Not on the request's thread, which would keep its pooled connection while the view
    waits for the database threads (50 page sends at once took the whole pool)."""
    import threading

    from django.contrib.auth import middleware as django_auth
    from django.contrib.sessions.backends.db import SessionStore
    from django.test import RequestFactory

    from chatproject.middleware import AuthenticationMiddleware

    threads = []
    real_get_user = django_auth.get_user

    def spying_get_user(request):
        threads.append(threading.current_thread().name)
        return real_get_user(request)

    monkeypatch.setattr(django_auth, "get_user", spying_get_user)
    request = RequestFactory().get("/")
    request.session = SessionStore()

    async def view(request):
        return None

    AuthenticationMiddleware(view).process_request(request)
    user = await request.auser()
    assert not user.is_authenticated
    assert await request.auser() is user  # cached
    assert len(threads) == 1 and threads[0].startswith("db_")
