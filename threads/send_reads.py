"""The reads every send makes, in hand-written SQL (see threads/rows.py for why).

- `gate`: an API key, the thread it sends to and that thread's organisation, with whether
  the key's `last_used` is due for a touch and whether the organisation has a budget, and
  the conversation so far (what the reply's request is built from), in one statement. No
  row means the key, the header or the thread is wrong: the caller then takes the ORM path
  that tells which (401, 403 or 404), so errors read exactly as before.
- `member_thread`: the same for a person on the page (thread, organisation, membership, and
  whether there is a budget to check and whether the thread is still empty, and the
  conversation so far).
- `history`: the conversation before a reply, as (role, content) pairs.

The instances are built with `Model.from_db` from the columns read; any other field is
deferred, so touching one costs a query instead of returning a wrong value.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import connections
from django.db.models import Model

from telemetry.models import Budget

from .models import ApiKey, Membership, Message, Organization, Thread

THREAD_COLUMNS = ("id", "org_id", "title", "system_prompt", "provider", "model")
ORG_COLUMNS = ("id", "slug", "name", "system_prompt", "fallback_models", "continue_partial")
_sql: dict[str, str] = {}


@dataclass(frozen=True, slots=True)
class Gate:
    thread: Thread  # with .org loaded
    key_id: int
    key_due: bool  # last_used is empty or older than the caller's cut-off
    history: list[tuple[str, str]]  # the thread's messages so far, as `history()` reads them


def _gate_sql(using: str) -> str:
    qn = connections[using].ops.quote_name
    t, o, k, b, m = (
        qn(model._meta.db_table) for model in (Thread, Organization, ApiKey, Budget, Message)
    )
    # One row per message of the thread (or one with NULLs for an empty thread), each
    # repeating the gate's columns: a round trip less than reading the history after.
    return (
        f"SELECT {', '.join(_columns(qn))}, k.id, "
        "CASE WHEN k.last_used IS NULL OR k.last_used < %s THEN 1 ELSE 0 END, "
        "m.role, m.content "
        f"FROM {k} k JOIN {o} o ON o.id = k.org_id "
        f"JOIN {t} t ON t.org_id = o.id AND t.code = %s "
        f"LEFT JOIN {b} b ON b.org_id = o.id "
        f"LEFT JOIN {m} m ON m.thread_id = t.id AND m.content <> '' "
        "WHERE k.hashed = %s AND k.revoked IS NULL AND b.id IS NULL "
        "ORDER BY m.created, m.id"
    )


def gate(
    token: str,
    org_slug: str | None,
    thread_code: uuid.UUID,
    touch_before: datetime,
    using: str = "default",
) -> Gate | None:
    """The thread `thread_code` of the organisation of active key `token`, if the request
    may go on without more checks; None when anything needs the slow path (an unknown key
    or thread, another organisation named in x-org-id, or a budget to check)."""
    connection = connections[using]
    sql = _statement("gate", using, _gate_sql)
    params = [
        ApiKey._meta.get_field("last_used").get_db_prep_value(touch_before, connection),
        Thread._meta.get_field("code").get_db_prep_value(thread_code, connection),
        ApiKey.hash(token),
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    if not rows:
        return None
    row = rows[0]
    thread = _thread_from_row(row, thread_code, using)
    if org_slug is not None and org_slug != thread.org.slug:
        return None
    return Gate(thread=thread, key_id=row[-4], key_due=bool(row[-3]), history=_history_of(rows))


@dataclass(frozen=True, slots=True)
class MemberThread:
    thread: Thread  # with .org loaded
    budgeted: bool  # the organisation has a budget (check it)
    empty: bool  # the thread has no messages yet
    history: list[tuple[str, str]]  # the thread's messages so far, as `history()` reads them


def _member_sql(using: str) -> str:
    qn = connections[using].ops.quote_name
    t, o, ms, b, m = (
        qn(model._meta.db_table) for model in (Thread, Organization, Membership, Budget, Message)
    )
    # One row per message with text (as in `_gate_sql`).
    return (
        f"SELECT {', '.join(_columns(qn))}, "
        f"CASE WHEN EXISTS (SELECT 1 FROM {b} b WHERE b.org_id = o.id) THEN 1 ELSE 0 END, "
        f"CASE WHEN EXISTS (SELECT 1 FROM {m} m WHERE m.thread_id = t.id) THEN 0 ELSE 1 END, "
        "h.role, h.content "
        f"FROM {t} t JOIN {o} o ON o.id = t.org_id "
        f"LEFT JOIN {m} h ON h.thread_id = t.id AND h.content <> '' WHERE t.code = %s "
        f"AND EXISTS (SELECT 1 FROM {ms} ms WHERE ms.org_id = o.id AND ms.user_id = %s) "
        "ORDER BY h.created, h.id"
    )


def member_thread(
    user_id: int, thread_code: uuid.UUID, using: str = "default"
) -> MemberThread | None:
    """Thread `thread_code` if user `user_id` is a member of its organisation, else None
    (then tenancy.get_thread_for_user answers 404, as for a thread that does not exist)."""
    connection = connections[using]
    sql = _statement("member", using, _member_sql)
    code = Thread._meta.get_field("code").get_db_prep_value(thread_code, connection)
    with connection.cursor() as cursor:
        cursor.execute(sql, [code, user_id])
        rows = cursor.fetchall()
    if not rows:
        return None
    row = rows[0]
    thread = _thread_from_row(row, thread_code, using)
    return MemberThread(
        thread=thread,
        budgeted=bool(row[-4]),
        empty=bool(row[-3]),
        history=_history_of(rows),
    )


def _history_of(rows: list[tuple[Any, ...]]) -> list[tuple[str, str]]:
    """(role, content) from the last two columns of each row; NULLs: no message."""
    return [(row[-2], row[-1]) for row in rows if row[-2] is not None]


def _columns(qn: Any) -> list[str]:
    return [f"t.{qn(c)}" for c in THREAD_COLUMNS] + [f"o.{qn(c)}" for c in ORG_COLUMNS]


def _thread_from_row(row: tuple[Any, ...], thread_code: uuid.UUID, using: str) -> Thread:
    """The thread and its organisation from the leading columns of `row` (`_columns`)."""
    n = len(THREAD_COLUMNS)
    org_values = dict(zip(ORG_COLUMNS, row[n : n + len(ORG_COLUMNS)], strict=True))
    org_values["continue_partial"] = bool(org_values["continue_partial"])  # SQLite: 0 / 1
    thread_values = dict(zip(THREAD_COLUMNS, row[:n], strict=True))
    thread = _from_db(Thread, using, {"code": thread_code, **thread_values})
    thread.org = _from_db(Organization, using, org_values)
    return thread


def _from_db[M: Model](model: type[M], using: str, values: dict[str, Any]) -> M:
    """An instance as the ORM loads one, with the fields in `values` (by attname) and the
    rest deferred."""
    names = [f.attname for f in model._meta.concrete_fields if f.attname in values]
    return model.from_db(using, names, [values[n] for n in names])


def _history_sql(using: str) -> str:
    qn = connections[using].ops.quote_name
    return (
        f"SELECT role, content FROM {qn(Message._meta.db_table)} "
        "WHERE thread_id = %s AND created <= %s AND id <> %s AND content <> '' "
        "ORDER BY created, id"
    )


def _statement(name: str, using: str, build: Callable[[str], str]) -> str:
    """The SQL of statement `name` for database `using`, built on first use."""
    key = f"{name}:{using}"
    sql = _sql.get(key)
    if sql is None:
        sql = _sql[key] = build(using)
    return sql


def history(message: Message, using: str = "default") -> list[tuple[str, str]]:
    """(role, content) of the thread's messages before `message`, oldest first, empty ones
    left out: the ORM's `Message.objects.filter(thread=…, created__lte=…).exclude(pk=…)
    .exclude(content="").order_by("created", "id")`."""
    connection = connections[using]
    sql = _statement("history", using, _history_sql)
    created = Message._meta.get_field("created").get_db_prep_value(message.created, connection)
    with connection.cursor() as cursor:
        cursor.execute(sql, [message.thread_id, created, message.pk])
        return cursor.fetchall()
