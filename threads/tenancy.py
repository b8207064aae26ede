"""Who may see what: organisations are tenants, and every query goes through here."""

from __future__ import annotations

from typing import Any

from django.http import Http404, HttpRequest
from django.shortcuts import get_object_or_404

from .models import Membership, Message, Organization, Thread

SESSION_ORG_KEY = "org_slug"


def orgs_for_user(user: Any) -> list[Organization]:
    return list(Organization.objects.filter(memberships__user=user).order_by("name"))


def current_org(request: HttpRequest) -> Organization:
    """The organisation the person is working in: the one chosen in the session, else their
    first. A person with no membership sees nothing (404)."""
    slug = request.session.get(SESSION_ORG_KEY)
    memberships = Membership.objects.filter(user=request.user).select_related("org")
    if slug:
        chosen = memberships.filter(org__slug=slug).first()
        if chosen is not None:
            return chosen.org
    first = memberships.order_by("org__name").first()
    if first is None:
        raise Http404("You are not a member of any organisation.")
    return first.org


def user_can_see_thread(user: Any, thread: Thread) -> bool:
    return Membership.objects.filter(user=user, org_id=thread.org_id).exists()


def get_thread_for_user(request: HttpRequest, code: Any) -> Thread:
    thread = get_object_or_404(Thread.objects.select_related("org"), code=code)
    if not user_can_see_thread(request.user, thread):
        # Never reveal that another organisation's thread exists.
        raise Http404("No such thread.")
    return thread


def get_message_for_user(request: HttpRequest, code: Any) -> Message:
    message = get_object_or_404(
        Message.objects.select_related("thread__org", "reply_to"), code=code
    )
    if not user_can_see_thread(request.user, message.thread):
        raise Http404("No such message.")
    return message
