"""Django's stock middleware, run on the event loop where it does no I/O.

Under ASGI, Django runs every hook of a sync-only middleware through sync_to_async: a trip to
the request's worker thread and back, before and after the view, about a dozen per request.
Each trip waits for a turn of a busy event loop, so under load they added tens of
milliseconds before a reply could start. The hooks below are pure computation on the request
and response (headers, cookies already parsed, lazy objects), so they run inline; the two
that can touch the database (saving a session, storing messages) still go to a thread when,
and only when, they will.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import middleware as auth
from django.contrib.messages import middleware as messages
from django.contrib.sessions import middleware as sessions
from django.core import checks
from django.http import HttpRequest, HttpResponseBase
from django.middleware import clickjacking, common, csrf, security
from django.utils.module_loading import import_string

from .db import database_sync_to_async


class _Inline:
    """A MiddlewareMixin whose hooks run on the loop (sync_to_async only when `_needs_thread`
    says the response hook will do I/O)."""

    get_response: Any

    def _needs_thread(self, request: HttpRequest) -> bool:
        return False

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        response = None
        if hasattr(self, "process_request"):
            response = self.process_request(request)
        response = response or await self.get_response(request)
        if hasattr(self, "process_response"):
            if self._needs_thread(request):
                response = await sync_to_async(self.process_response, thread_sensitive=True)(
                    request, response
                )
            else:
                response = self.process_response(request, response)
        return response


class SecurityMiddleware(_Inline, security.SecurityMiddleware):
    pass


class CommonMiddleware(_Inline, common.CommonMiddleware):
    pass


class XFrameOptionsMiddleware(_Inline, clickjacking.XFrameOptionsMiddleware):
    pass


class AuthenticationMiddleware(_Inline, auth.AuthenticationMiddleware):
    """request.user stays lazy; request.auser() (async views, login_required) loads the
    session and the user in one call on the database threads, which hand the connection
    back at once. Django's own version queries from the request's thread, which keeps its
    connection until the response ends: async views that then waited for the database
    threads could take the whole PostgreSQL pool and wait on each other until it timed out."""

    def process_request(self, request: HttpRequest) -> None:
        super().process_request(request)
        request.auser = partial(_auser, request)  # type: ignore[attr-defined]


async def _auser(request: HttpRequest) -> Any:
    if not hasattr(request, "_acached_user"):
        request._acached_user = await database_sync_to_async(auth.get_user)(request)  # type: ignore[attr-defined]
    return request._acached_user  # type: ignore[attr-defined]


class SessionMiddleware(_Inline, sessions.SessionMiddleware):
    def _needs_thread(self, request: HttpRequest) -> bool:
        # Only a modified session is saved (reading it was the view's trip, not ours).
        session = getattr(request, "session", None)
        return session is not None and (session.modified or settings.SESSION_SAVE_EVERY_REQUEST)


class MessageMiddleware(_Inline, messages.MessageMiddleware):
    def _needs_thread(self, request: HttpRequest) -> bool:
        # Messages are stored (cookie, else session) only if some were read or added.
        storage = getattr(request, "_messages", None)
        return storage is not None and (storage.used or storage.added_new)


class CsrfViewMiddleware(_Inline, csrf.CsrfViewMiddleware):
    """The token check reads the cookie, headers and an already-read form body."""

    async def process_view(  # type: ignore[override]
        self, request: HttpRequest, callback: Any, callback_args: Any, callback_kwargs: Any
    ) -> HttpResponseBase | None:
        return super().process_view(request, callback, callback_args, callback_kwargs)


# Django's deploy checks look for its own class names in MIDDLEWARE, so settings.py silences
# security.W001-W003 and this check asks the same of these subclasses instead.
_REQUIRED = {
    "security.W001": security.SecurityMiddleware,
    "security.W002": clickjacking.XFrameOptionsMiddleware,
    "security.W003": csrf.CsrfViewMiddleware,
}


@checks.register(checks.Tags.security, deploy=True)
def check_security_middleware(**kwargs: Any) -> list[checks.CheckMessage]:
    installed = [import_string(path) for path in settings.MIDDLEWARE]
    return [
        checks.Warning(
            f"No {required.__module__}.{required.__name__} (or subclass) in MIDDLEWARE.",
            id=f"chatproject.{check_id.split('.')[1]}",
        )
        for check_id, required in _REQUIRED.items()
        if not any(issubclass(cls, required) for cls in installed if isinstance(cls, type))
    ]
