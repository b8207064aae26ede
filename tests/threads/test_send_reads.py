"""threads/send_reads.py: the send's reads in SQL agree with the ORM's."""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from telemetry.models import Budget
from tests.factories import make_api_key, make_org, make_thread
from threads import send_reads
from threads.models import ApiKey, Message, add_exchange

pytestmark = pytest.mark.django_db


@pytest.fixture
def acme():
    org = make_org("acme")
    org.system_prompt, org.fallback_models, org.continue_partial = "Be brief.", "a:b", True
    org.save()
    return org, make_api_key(org), make_thread(org, title="Plans")


def _gate(token, thread_code, org_slug=None):
    return send_reads.gate(token, org_slug, thread_code, timezone.now() - timedelta(minutes=1))


def test_the_gate_loads_the_thread_and_its_organisation(acme, django_assert_num_queries):
    org, key, thread = acme
    with django_assert_num_queries(1):
        gate = _gate(key, thread.code)
        assert gate is not None
        got = gate.thread
        assert (got.pk, got.code, got.title, got.org_id) == (
            thread.pk,
            thread.code,
            "Plans",
            org.pk,
        )
        assert (got.org.slug, got.org.system_prompt, got.org.continue_partial) == (
            "acme",
            "Be brief.",
            True,
        )
        assert got.org.fallback_list() == ["a:b"]
    assert gate.key_id == ApiKey.objects.get(org=org).pk
    # A field the gate did not read is deferred: it loads when touched, never reads wrong.
    assert got.created == thread.created


def test_the_gate_says_when_the_key_is_due_for_a_touch(acme):
    org, key, thread = acme
    assert _gate(key, thread.code).key_due  # never used
    ApiKey.objects.filter(org=org).update(last_used=timezone.now())
    assert not _gate(key, thread.code).key_due
    ApiKey.objects.filter(org=org).update(last_used=timezone.now() - timedelta(minutes=2))
    assert _gate(key, thread.code).key_due


def test_the_gate_lets_nothing_unusual_through(acme):
    org, key, thread = acme
    globex = make_org("globex")
    assert _gate("sk-chat-unknown", thread.code) is None
    assert _gate(make_api_key(globex), thread.code) is None  # another organisation's thread
    assert _gate(key, uuid.uuid4()) is None
    assert _gate(key, thread.code, org_slug="globex") is None
    assert _gate(key, thread.code, org_slug="acme") is not None
    Budget.objects.create(org=org, monthly_usd=Decimal("5"))  # a budget is checked the long way
    assert _gate(key, thread.code) is None
    Budget.objects.all().delete()
    ApiKey.objects.filter(org=org).update(revoked=timezone.now())
    assert _gate(key, thread.code) is None


def test_history_is_the_conversation_before_the_reply(acme):
    _, _, thread = acme
    first_user, first_reply, _ = add_exchange(thread, content="One", provider="demo", model="m")
    Message.objects.filter(pk=first_reply.pk).update(content="Two")
    add_exchange(thread, content="Empty reply next", provider="demo", model="m")
    _, reply, _ = add_exchange(thread, content="Three", provider="demo", model="m")
    expected = list(
        Message.objects.filter(thread=thread, created__lte=reply.created)
        .exclude(pk=reply.pk)
        .exclude(content="")
        .order_by("created", "id")
        .values_list("role", "content")
    )
    assert [tuple(row) for row in send_reads.history(reply)] == expected
    assert [content for _, content in expected] == ["One", "Two", "Empty reply next", "Three"]


def test_the_gate_reads_the_conversation_so_far(acme):
    _, key, thread = acme
    assert _gate(key, thread.code).history == []  # a new thread
    _, first_reply, _ = add_exchange(thread, content="One", provider="demo", model="m")
    Message.objects.filter(pk=first_reply.pk).update(content="Two")
    add_exchange(thread, content="Empty reply next", provider="demo", model="m")
    expected = list(
        Message.objects.filter(thread=thread)
        .exclude(content="")
        .order_by("created", "id")
        .values_list("role", "content")
    )
    assert _gate(key, thread.code).history == expected
    assert [content for _, content in expected] == ["One", "Two", "Empty reply next"]


def test_member_thread_needs_a_membership_and_reports_budget_and_emptiness(acme):
    from tests.factories import make_user

    org, _, thread = acme
    alice = make_user("alice", org)
    mallory = make_user("mallory", make_org("globex"))
    found = send_reads.member_thread(alice.pk, thread.code)
    assert found is not None
    assert (found.thread.pk, found.thread.org.slug, found.budgeted, found.empty) == (
        thread.pk,
        "acme",
        False,
        True,
    )
    assert send_reads.member_thread(mallory.pk, thread.code) is None
    assert send_reads.member_thread(alice.pk, uuid.uuid4()) is None
    add_exchange(thread, content="Hi", provider="demo", model="m")
    Budget.objects.create(org=org, monthly_usd=Decimal("5"))
    found = send_reads.member_thread(alice.pk, thread.code)
    assert (found.budgeted, found.empty) == (True, False)


def test_a_send_through_the_gate_builds_its_request_without_reading_the_history_again(acme):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from threads.api import KeyToCheck, SendIn, _save_send
    from threads.replies import build_request

    _, key, thread = acme
    _, first_reply, _ = add_exchange(thread, content="One", provider="demo", model="m")
    Message.objects.filter(pk=first_reply.pk).update(content="Two")
    add_exchange(thread, content="Empty reply next", provider="demo", model="m")
    payload = SendIn(content="Three", provider="demo", model="demo-chat")
    with CaptureQueriesContext(connection) as queries:
        sent = _save_send(KeyToCheck(key, None), thread.code, payload)
    assert not any(q["sql"].startswith("SELECT role, content") for q in queries)
    assert sent.created and sent.request is not None
    assert sent.request == build_request(sent.reply)  # what a reload of the row would send
    assert [t.content for t in sent.request.turns] == ["One", "Two", "Empty reply next", "Three"]


def test_member_thread_reads_the_conversation_so_far(acme):
    from tests.factories import make_user

    org, _, thread = acme
    alice = make_user("alice", org)
    assert send_reads.member_thread(alice.pk, thread.code).history == []
    _, first_reply, _ = add_exchange(thread, content="One", provider="demo", model="m")
    Message.objects.filter(pk=first_reply.pk).update(content="Two")
    add_exchange(thread, content="Empty reply next", provider="demo", model="m")
    found = send_reads.member_thread(alice.pk, thread.code)
    assert [content for _, content in found.history] == ["One", "Two", "Empty reply next"]
    assert [role for role, _ in found.history] == ["user", "assistant", "user"]
    assert not found.empty
