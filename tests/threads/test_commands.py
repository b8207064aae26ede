from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.utils import timezone

from tests.factories import make_org, make_thread, make_user
from threads.models import ApiKey, Membership, Message, Organization, add_exchange
from threads.tasks import reap_stale_replies

pytestmark = pytest.mark.django_db


def run(*args, **options) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO(), **options)
    return out.getvalue()


def test_bootstrap_demo_is_idempotent(settings):
    settings.DEBUG = True
    settings.DEMO_PASSWORD = ""
    run("bootstrap_demo")
    run("bootstrap_demo")
    assert Organization.objects.filter(slug="demo-org").count() == 1
    user = get_user_model().objects.get(username="demo")
    assert user.check_password("demo-password")
    assert Membership.objects.get(user=user).role == "owner"


def test_bootstrap_demo_needs_a_password_when_debug_is_off(settings):
    settings.DEBUG = False
    settings.DEMO_PASSWORD = ""
    with pytest.raises(CommandError, match="password"):
        run("bootstrap_demo")
    run("bootstrap_demo", password="a-real-secret")
    assert get_user_model().objects.get(username="demo").check_password("a-real-secret")


def test_create_org_with_an_owner():
    make_user("alice")
    run("create_org", "acme", name="Acme", owner="alice")
    org = Organization.objects.get(slug="acme")
    assert org.name == "Acme"
    assert org.memberships.get().role == "owner"
    with pytest.raises(CommandError, match="already exists"):
        run("create_org", "acme")
    with pytest.raises(CommandError, match="not a slug"):
        run("create_org", "Not A Slug")


def test_create_api_key_prints_the_key_alone_on_its_last_line():
    make_org("acme")
    raw = run("create_api_key", org="acme").strip().splitlines()[-1]
    key = ApiKey.objects.get()
    assert raw.startswith(key.prefix)
    assert key.hashed == ApiKey.hash(raw) and raw not in (key.hashed, key.prefix)
    with pytest.raises(CommandError, match="No organisation"):
        run("create_api_key", org="nope")


def test_revoke_api_key_by_prefix():
    org = make_org("acme")
    key, _ = ApiKey.issue(org)
    run("revoke_api_key", key.prefix)
    key.refresh_from_db()
    assert key.revoked is not None
    assert not ApiKey.objects.active().exists()
    with pytest.raises(CommandError):
        run("revoke_api_key", "sk-chat-none")


def test_the_reaper_ends_replies_whose_process_died():
    thread = make_thread(make_org("acme"))
    _, stale, _ = add_exchange(thread, content="one", provider="demo", model="demo-chat")
    _, fresh, _ = add_exchange(thread, content="two", provider="demo", model="demo-chat")
    long_ago = timezone.now() - timedelta(minutes=5)
    Message.objects.filter(pk=stale.pk).update(
        status=Message.Status.STREAMING, content="Half an ans", heartbeat=long_ago
    )
    Message.objects.filter(pk=fresh.pk).update(
        status=Message.Status.STREAMING, heartbeat=timezone.now()
    )

    assert reap_stale_replies.delay().get() == 1

    stale.refresh_from_db()
    fresh.refresh_from_db()
    assert stale.status == "interrupted" and stale.content == "Half an ans"
    assert "retry" in stale.error
    assert fresh.status == "streaming"
