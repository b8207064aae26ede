"""Plain factories for test data: explicit and local, no magic."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractUser

from threads.models import ApiKey, Membership, Message, Organization, Thread, add_exchange


def make_org(slug: str = "acme", name: str = "") -> Organization:
    return Organization.objects.create(slug=slug, name=name or slug.title())


def make_user(
    username: str = "alice", org: Organization | None = None, role: str = "member"
) -> AbstractUser:
    user = get_user_model().objects.create_user(username=username, password="password")
    if org is not None:
        Membership.objects.create(user=user, org=org, role=role)
    return user


def make_thread(org: Organization, user: AbstractUser | None = None, title: str = "") -> Thread:
    return Thread.objects.create(org=org, creator=user, title=title)


def make_api_key(org: Organization, name: str = "test") -> str:
    return ApiKey.issue(org, name)[1]


def make_exchange(
    thread: Thread, content: str = "Hello", reply: str = "Hi there."
) -> tuple[Message, Message]:
    user_message, assistant, _ = add_exchange(
        thread, content=content, provider="demo", model="demo-chat"
    )
    assistant.content = reply
    assistant.status = Message.Status.COMPLETE
    assistant.save()
    return user_message, assistant
