"""threads/rows.py: writes with SQL built once must store what the ORM would."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db import DatabaseError, IntegrityError, connection
from django.db.models.signals import post_save, pre_save
from django.test.utils import CaptureQueriesContext

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


def _pair(thread: Thread, content: str = "Question", code: uuid.UUID | None = None):
    question = Message(thread=thread, role=Message.Role.USER, content=content, created=WHEN)
    answer = Message(
        code=code or uuid.uuid4(),
        thread=thread,
        role=Message.Role.ASSISTANT,
        status=Message.Status.QUEUED,
        created=WHEN,
    )
    return question, answer


def test_insert_pair_links_the_second_row_to_the_first_and_touches_a_third():
    thread = make_thread(make_org())
    question, answer = _pair(thread)
    rows.insert_pair(question, answer, "reply_to", touch=(Thread, thread.pk, {"title": "Asked"}))
    assert question.pk and answer.pk and answer.reply_to_id == question.pk
    assert not question._state.adding and not answer._state.adding
    stored = Message.objects.get(pk=answer.pk)
    assert stored.reply_to_id == question.pk
    assert stored.status == "queued"
    assert Message.objects.get(pk=question.pk).content == "Question"
    assert Thread.objects.get(pk=thread.pk).title == "Asked"


def test_insert_pair_writes_nothing_when_one_write_fails():
    thread = make_thread(make_org(), title="Before")
    taken = Message.objects.create(thread=thread, role=Message.Role.USER, content="Earlier")
    question, answer = _pair(thread, "Lost", code=taken.code)  # the answer's code is taken
    with pytest.raises(IntegrityError):
        rows.insert_pair(question, answer, "reply_to", touch=(Thread, thread.pk, {"title": "X"}))
    # The caller's transaction goes on: the failed pair left it usable.
    assert not Message.objects.filter(content="Lost").exists()
    assert Thread.objects.get(pk=thread.pk).title == "Before"


@pytest.mark.django_db(transaction=True)
def test_insert_pair_outside_a_transaction_is_one_statement_on_postgresql():
    thread = make_thread(make_org(), title="Before")
    question, answer = _pair(thread)
    with CaptureQueriesContext(connection) as queries:
        rows.insert_pair(question, answer, "reply_to", touch=(Thread, thread.pk, {"title": "T"}))
    if connection.vendor == "postgresql":
        assert len(queries) == 1  # no BEGIN / COMMIT round trips either
    assert Message.objects.get(pk=answer.pk).reply_to_id == question.pk
    assert Thread.objects.get(pk=thread.pk).title == "T"
    taken = Message.objects.get(pk=answer.pk).code
    lost, duplicate = _pair(thread, "Lost", code=taken)
    with pytest.raises(IntegrityError):
        rows.insert_pair(lost, duplicate, "reply_to", touch=(Thread, thread.pk, {"title": "X"}))
    assert not Message.objects.filter(content="Lost").exists()
    assert Thread.objects.get(pk=thread.pk).title == "T"


def _stored(message: Message) -> dict[str, object]:
    fields = [f for f in Message._meta.concrete_fields if not f.primary_key and f.name != "code"]
    return {f.attname: getattr(message, f.attname) for f in fields}


def test_insert_pair_stores_columns_the_rows_share_and_columns_they_do_not():
    thread = make_thread(make_org())
    question, answer = _pair(thread)
    # Shared: thread, created, the defaults. Different: role, content, status, JSON, numbers.
    question.chain, answer.chain = ["a:b"], ["a:b"]  # equal JSON is still sent twice
    answer.requested_provider, answer.requested_model = "openai", "gpt-4o-mini"
    answer.cost_usd, answer.ttft_ms, answer.updated = Decimal("0.000123"), 7, WHEN
    question.updated = datetime(2026, 11, 29, 3, 4, 6, tzinfo=UTC)
    expected = (_stored(question), _stored(answer))
    rows.insert_pair(question, answer, "reply_to", touch=(Thread, thread.pk, {"title": "T"}))
    stored_question = Message.objects.get(pk=question.pk)
    stored_answer = Message.objects.get(pk=answer.pk)
    assert _stored(stored_question) == expected[0] | {"reply_to_id": None}
    assert _stored(stored_answer) == expected[1] | {"reply_to_id": question.pk}
    assert (stored_question.code, stored_answer.code) == (question.code, answer.code)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="psycopg's statement cache")
def test_a_sends_insert_is_small_enough_for_psycopgs_statement_cache(monkeypatch):
    from psycopg import _queries

    # psycopg caches how it splits a statement into parts only up to 50 parameters and
    # 4096 bytes; a bigger one is split again on every execution.
    resplit = []
    uncached = _queries._query2pg_client_nocache

    def spy(*args):
        resplit.append(args[0])
        return uncached(*args)

    monkeypatch.setattr(_queries, "_query2pg_client_nocache", spy)
    thread = make_thread(make_org())
    for content in ("First", "Second"):
        question, answer = _pair(thread, content)
        answer.requested_provider, answer.requested_model = "openai", "gpt-4o-mini"
        fields = {"updated": WHEN, "provider": "openai", "model": "gpt-4o-mini", "title": "T"}
        rows.insert_pair(question, answer, "reply_to", touch=(Thread, thread.pk, fields))
    assert resplit == []
    assert Message.objects.filter(thread=thread).count() == 4
