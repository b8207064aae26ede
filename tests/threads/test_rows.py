"""threads/rows.py: writes with SQL built once must store what the ORM would."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db import DatabaseError
from django.db.models.signals import post_save, pre_save

from telemetry.models import ProviderCall
from tests.factories import make_org, make_thread
from threads import rows
from threads.models import ApiKey, Message, Thread

pytestmark = pytest.mark.django_db

WHEN = datetime(2026, 11, 29, 3, 4, 5, 678901, tzinfo=UTC)


def test_the_models_it_writes_have_no_signal_receivers():
    # rows sends no signals: a receiver added to one of these models would go unheard.
    for model in (Message, Thread, ApiKey, ProviderCall):
        assert not pre_save.has_listeners(model), model
        assert not post_save.has_listeners(model), model


def test_insert_stores_every_field_as_the_orm_reads_it():
    thread = make_thread(make_org())
    code = uuid.uuid4()
    message = Message(
        code=code,
        thread=thread,
        role=Message.Role.ASSISTANT,
        status=Message.Status.STREAMING,
        content="Hello",
        sources=[{"title": "T", "url": "https://example.com", "date": ""}],
        chain=["demo:demo-chat"],
        cost_usd=Decimal("0.00001234"),
        ttft_ms=210,
        tokens_estimated=True,
        created=WHEN,
        updated=WHEN,
    )
    rows.insert([message])
    assert message.pk is not None
    assert not message._state.adding
    stored = Message.objects.get(pk=message.pk)
    assert stored.code == code
    assert stored.thread_id == thread.pk
    assert stored.status == "streaming"
    assert stored.sources == [{"title": "T", "url": "https://example.com", "date": ""}]
    assert stored.chain == ["demo:demo-chat"]
    assert stored.cost_usd == Decimal("0.00001234")
    assert stored.ttft_ms == 210
    assert stored.tokens_estimated is True
    assert stored.reasoning == ""
    assert stored.finished is None
    assert stored.created == WHEN


def test_insert_of_several_rows_sets_each_primary_key_in_order():
    thread = make_thread(make_org())
    messages = [Message(thread=thread, role="user", content=str(i)) for i in range(3)]
    rows.insert(messages)
    assert [Message.objects.get(pk=m.pk).content for m in messages] == ["0", "1", "2"]


def test_a_repeated_client_id_still_breaks_the_unique_constraint():
    from django.db import IntegrityError, transaction

    thread = make_thread(make_org())
    rows.insert([Message(thread=thread, role="user", client_id="abc")])
    with pytest.raises(IntegrityError), transaction.atomic():
        rows.insert([Message(thread=thread, role="user", client_id="abc")])


def test_update_changes_the_named_columns_only():
    thread = make_thread(make_org(), title="Old")
    assert rows.update(Thread, thread.pk, {"title": "New", "updated": WHEN}) == 1
    thread.refresh_from_db()
    assert (thread.title, thread.updated, thread.provider) == ("New", WHEN, "")


def test_update_with_a_condition_leaves_a_row_that_does_not_meet_it():
    thread = make_thread(make_org())
    reply = Message.objects.create(thread=thread, role="assistant", status="complete")
    active = {"status": Message.ACTIVE}
    assert rows.update(Message, reply.pk, {"content": "late"}, only_if_in=active) == 0
    reply.status = "streaming"
    reply.save()
    assert rows.update(Message, reply.pk, {"content": "now"}, only_if_in=active) == 1
    reply.refresh_from_db()
    assert reply.content == "now"


def test_save_fields_writes_the_instance_and_fails_on_a_missing_row():
    thread = make_thread(make_org())
    reply = Message.objects.create(thread=thread, role="assistant", status="streaming")
    reply.content, reply.status, reply.chain = "Done", "complete", ["a:b"]
    rows.save_fields(reply, ["content", "status", "chain"])
    stored = Message.objects.get(pk=reply.pk)
    assert (stored.content, stored.status, stored.chain) == ("Done", "complete", ["a:b"])
    Message.objects.filter(pk=reply.pk).delete()
    with pytest.raises(DatabaseError):
        rows.save_fields(reply, ["content"])


def _pair(thread: Thread, client_id: str = "") -> tuple[Message, Message]:
    user = Message(
        thread=thread, role=Message.Role.USER, content="Hi", client_id=client_id, created=WHEN
    )
    reply = Message(
        thread=thread,
        role=Message.Role.ASSISTANT,
        status=Message.Status.QUEUED,
        requested_provider="demo",
        requested_model="demo-chat",
        created=WHEN,
    )
    return user, reply


@pytest.mark.django_db(transaction=True)
def test_insert_linked_stores_both_rows_and_the_update():
    """Outside a transaction, as a send runs: on PostgreSQL the single-statement form."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    thread = make_thread(make_org())
    user, reply = _pair(thread)
    with CaptureQueriesContext(connection) as queries:
        rows.insert_linked(user, reply, "reply_to", (Thread, thread.pk, {"title": "Hi there"}))
    if connection.vendor == "postgresql":
        assert len(queries) == 1  # no BEGIN, no COMMIT: one statement is atomic
    assert user.pk and reply.pk and not user._state.adding and not reply._state.adding
    assert reply.reply_to is user
    stored = Message.objects.get(pk=reply.pk)
    assert stored.reply_to_id == user.pk and stored.thread_id == thread.pk
    assert (stored.status, stored.requested_model, stored.created) == ("queued", "demo-chat", WHEN)
    assert Message.objects.get(pk=user.pk).content == "Hi"
    assert Thread.objects.get(pk=thread.pk).title == "Hi there"


@pytest.mark.django_db(transaction=True)
def test_insert_linked_writes_nothing_when_a_row_is_refused():
    from django.db import IntegrityError

    thread = make_thread(make_org(), title="Kept")
    first, first_reply = _pair(thread, client_id="c-1")
    rows.insert_linked(first, first_reply, "reply_to", (Thread, thread.pk, {"title": "Kept"}))
    again, again_reply = _pair(thread, client_id="c-1")  # the same client id: refused
    with pytest.raises(IntegrityError):
        rows.insert_linked(again, again_reply, "reply_to", (Thread, thread.pk, {"title": "New"}))
    assert Message.objects.filter(thread=thread).count() == 2
    assert Thread.objects.get(pk=thread.pk).title == "Kept"


def test_insert_linked_inside_a_transaction_leaves_it_usable_after_a_refusal():
    """Inside the caller's transaction a refusal rolls back to a savepoint only."""
    from django.db import IntegrityError

    thread = make_thread(make_org())
    first, first_reply = _pair(thread, client_id="c-2")
    rows.insert_linked(first, first_reply, "reply_to", (Thread, thread.pk, {"title": "A"}))
    again, again_reply = _pair(thread, client_id="c-2")
    with pytest.raises(IntegrityError):
        rows.insert_linked(again, again_reply, "reply_to", (Thread, thread.pk, {"title": "B"}))
    assert Message.objects.filter(thread=thread).count() == 2  # the transaction still works
