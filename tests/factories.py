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


def make_call(org: Organization, **fields: object) -> object:
    """A telemetry ProviderCall row with plausible defaults."""
    from datetime import UTC, datetime
    from decimal import Decimal

    from telemetry.models import ProviderCall

    defaults: dict[str, object] = {
        "provider": "demo",
        "model": "demo-chat",
        "number": 1,
        "outcome": "ok",
        "started": datetime.now(UTC),
        "ttft_ms": 300,
        "latency_ms": 2000,
        "prompt_tokens": 100,
        "completion_tokens": 50,
        "cost_usd": Decimal("0.001"),
        "final": True,
    }
    return ProviderCall.objects.create(org=org, **{**defaults, **fields})
