"""Row writes on the hot path, with SQL built once instead of on every call.

Django compiles the SQL of every `create()`, `save()` and `update()` anew: about 0.5-1 ms of
CPU each, while the statement itself takes a tenth of that. A send and a reply make a
handful of writes, all on the one core that also streams every other reply, so `insert` and
`update` here build each statement once per model and column set, from the model's own
fields (a migration is followed, names are quoted by the backend), and prepare the values
exactly as Django does (`Field.pre_save`, `Field.get_db_prep_save`).

They send no model signals: the models written here have no receivers
(tests/threads/test_rows.py checks that, so adding one fails a test rather than going unheard).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from django.db import DatabaseError, connections, transaction
from django.db.models import Field, Model

_statements: dict[tuple[Any, ...], str] = {}


def _insert_fields(model: type[Model]) -> list[Field[Any, Any]]:
    opts = model._meta
    assert getattr(opts.pk, "db_returning", False), f"{model.__name__} needs an auto primary key"
    return [f for f in opts.concrete_fields if f is not opts.pk and not f.generated]


def insert(objs: Sequence[Model], using: str = "default") -> None:
    """INSERT unsaved instances of one model in one statement; set their primary keys."""
    if not objs:
        return
    model = type(objs[0])
    connection = connections[using]
    fields = _insert_fields(model)
    key = ("insert", model, len(objs), using)
    sql = _statements.get(key)
    if sql is None:
        qn = connection.ops.quote_name
        row = "(" + ", ".join(["%s"] * len(fields)) + ")"
        sql = _statements[key] = (
            f"INSERT INTO {qn(model._meta.db_table)} ({', '.join(qn(f.column) for f in fields)}) "
            f"VALUES {', '.join([row] * len(objs))} RETURNING {qn(model._meta.pk.column)}"
        )
    params = [f.get_db_prep_save(f.pre_save(obj, True), connection) for obj in objs for f in fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        pks = [r[0] for r in cursor.fetchall()]
    for obj, pk in zip(objs, pks, strict=True):
        obj.pk = pk
        obj._state.adding = False
        obj._state.db = using


def insert_pair(
    first: Model,
    second: Model,
    link: str,
    touch: tuple[type[Model], Any, Mapping[str, Any]] | None = None,
    using: str = "default",
) -> None:
    """INSERT `first`, then `second` with its foreign key `link` pointing at `first`, then
    UPDATE one more row (`touch`: model, primary key, values), all or nothing; set their
    primary keys.

    On PostgreSQL that is one statement (data-modifying CTEs): one round trip, atomic by
    itself, where separate statements in a transaction make five (BEGIN, three writes,
    COMMIT), each of which also waits for the GIL behind every stream when it returns.
    Elsewhere it is those statements in a transaction.

    The second row takes every column whose value equals the first row's from the first
    row, so the statement sends each value once. For a message pair that is about 45
    parameters instead of 67: psycopg caches how it splits a statement only up to 50
    parameters, and split one with more anew on every send (about 1 ms of CPU).
    """
    connection = connections[using]
    link_field = second._meta.get_field(link)
    if connection.vendor != "postgresql":
        with transaction.atomic(using):
            insert([first], using)
            setattr(second, link_field.attname, first.pk)
            insert([second], using)
            if touch is not None:
                update(*touch, using=using)
        return
    first_fields, second_fields = _insert_fields(type(first)), _insert_fields(type(second))
    first_params = [f.get_db_prep_save(f.pre_save(first, True), connection) for f in first_fields]
    # A column the second row shares with the first (same model, same value: the thread, the
    # times, every default) is read from the first row instead of sent again.
    shared_value = (
        dict(zip(first_fields, first_params, strict=True)) if type(first) is type(second) else {}
    )
    shared: list[bool] = []
    params = list(first_params)
    for f in second_fields:
        if f is link_field:
            shared.append(False)
            continue
        value = f.get_db_prep_save(f.pre_save(second, True), connection)
        same = f in shared_value and _same(shared_value[f], value)
        shared.append(same)
        if not same:
            params.append(value)
    touched = () if touch is None else tuple(touch[2])
    touch_model = None if touch is None else touch[0]
    key = ("pair", type(first), type(second), link, tuple(shared), touch_model, touched, using)
    sql = _statements.get(key)
    if sql is None:
        sql = _statements[key] = _pair_sql(
            connection, first_fields, second_fields, link_field, shared, touch_model, touched
        )
    if touch is not None:
        model, pk_value, values = touch
        opts = model._meta
        params += [opts.get_field(n).get_db_prep_save(values[n], connection) for n in touched]
        params.append(opts.pk.get_db_prep_value(pk_value, connection))
    # Inside a caller's transaction, a savepoint lets the caller recover from an
    # IntegrityError (a repeated client id); on its own the statement needs none.
    savepoint = transaction.atomic(using) if connection.in_atomic_block else nullcontext()
    with savepoint, connection.cursor() as cursor:
        cursor.execute(sql, params)
        pks = cursor.fetchone()
    for obj, pk_value in zip((first, second), pks, strict=True):
        obj.pk = pk_value
        obj._state.adding = False
        obj._state.db = using
    setattr(second, link_field.attname, first.pk)


# Prepared values of these types are compared by value; any other (a JSON adapter, say) is
# taken to differ.
_PLAIN = (str, int, bool, float, Decimal, datetime, date, time, timedelta, uuid.UUID, bytes)


def _same(a: Any, b: Any) -> bool:
    """Whether two prepared values are surely the same SQL value."""
    return type(a) is type(b) and (a is None or isinstance(a, _PLAIN)) and a == b


def _pair_sql(
    connection: Any,
    first_fields: list[Field[Any, Any]],
    second_fields: list[Field[Any, Any]],
    link_field: Field[Any, Any],
    shared: list[bool],
    touch_model: type[Model] | None,
    touched: tuple[str, ...],
) -> str:
    qn = connection.ops.quote_name
    first_opts, second_opts = first_fields[0].model._meta, second_fields[0].model._meta
    pk, second_pk = qn(first_opts.pk.column), qn(second_opts.pk.column)

    def columns(fields: list[Field[Any, Any]]) -> str:
        return ", ".join(qn(f.column) for f in fields)

    values = []
    for f, same in zip(second_fields, shared, strict=True):
        if f is link_field:
            values.append(f"(SELECT {pk} FROM first_row)")
        elif same:
            values.append(f"(SELECT {qn(f.column)} FROM first_row)")
        else:
            values.append("%s")
    returned = [pk] + [qn(f.column) for f, same in zip(second_fields, shared, strict=True) if same]
    parts = [
        f"first_row AS (INSERT INTO {qn(first_opts.db_table)} ({columns(first_fields)}) "
        f"VALUES ({', '.join(['%s'] * len(first_fields))}) RETURNING {', '.join(returned)})",
        f"second_row AS (INSERT INTO {qn(second_opts.db_table)} ({columns(second_fields)}) "
        f"VALUES ({', '.join(values)}) RETURNING {second_pk})",
    ]
    if touch_model is not None:
        opts = touch_model._meta
        sets = ", ".join(f"{qn(opts.get_field(n).column)} = %s" for n in touched)
        parts.append(
            f"touched AS (UPDATE {qn(opts.db_table)} SET {sets} WHERE {qn(opts.pk.column)} = %s)"
        )
    return (
        f"WITH {', '.join(parts)} "
        f"SELECT first_row.{pk}, second_row.{second_pk} FROM first_row, second_row"
    )


def update(
    model: type[Model],
    pk: Any,
    values: Mapping[str, Any],
    *,
    only_if_in: Mapping[str, Iterable[Any]] | None = None,
    using: str = "default",
) -> int:
    """UPDATE one row's columns by primary key; with `only_if_in`, only while each named
    field holds one of the given values. Return the number of rows changed (0 or 1)."""
    connection = connections[using]
    opts = model._meta
    names = tuple(values)
    conditions = {name: tuple(allowed) for name, allowed in (only_if_in or {}).items()}
    key = ("update", model, names, tuple((n, len(v)) for n, v in conditions.items()), using)
    sql = _statements.get(key)
    if sql is None:
        qn = connection.ops.quote_name
        sets = ", ".join(f"{qn(opts.get_field(n).column)} = %s" for n in names)
        where = [f"{qn(opts.pk.column)} = %s"] + [
            f"{qn(opts.get_field(n).column)} IN ({', '.join(['%s'] * len(v))})"
            for n, v in conditions.items()
        ]
        sql = _statements[key] = (
            f"UPDATE {qn(opts.db_table)} SET {sets} WHERE {' AND '.join(where)}"
        )
    params = [opts.get_field(n).get_db_prep_save(values[n], connection) for n in names]
    params.append(opts.pk.get_db_prep_value(pk, connection))
    for name, allowed in conditions.items():
        field = opts.get_field(name)
        params.extend(field.get_db_prep_value(v, connection) for v in allowed)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def save_fields(obj: Model, names: Sequence[str], using: str = "default") -> None:
    """Like `obj.save(update_fields=names)`, without its per-call compilation; a row that
    is gone raises DatabaseError, as Django's save does."""
    opts = obj._meta
    values = {n: opts.get_field(n).pre_save(obj, False) for n in names}
    if not update(type(obj), obj.pk, values, using=using):
        raise DatabaseError("Save with update_fields did not affect any rows.")
