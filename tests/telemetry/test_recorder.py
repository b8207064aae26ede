from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from unittest import mock

import pytest
from asgiref.sync import sync_to_async
from django.db import DatabaseError

from providers.base import Usage
from providers.models import CatalogModel
from providers.policy import Attempt
from telemetry import metrics
from telemetry.models import ProviderCall
from telemetry.recorder import ReplyTimings, count_calls, record_attempts
from tests.factories import make_exchange, make_org, make_thread
from threads import replies
from threads.models import Message, add_exchange

pytestmark = [pytest.mark.django_db(transaction=True)]

TIMINGS = ReplyTimings(queued_ms=5, upstream_ttft_ms=400, overhead_ms=3, ttft_ms=420, total_ms=2100)


def _attempt(model: str, number: int, outcome: str = "ok", **kw) -> Attempt:
    return Attempt(
        provider=kw.pop("provider", "openai"),
        model=model,
        number=number,
        is_fallback=kw.pop("is_fallback", False),
        started=datetime(2026, 3, 1, 12, 0, number, tzinfo=UTC),
        outcome=outcome,
        **kw,
    )


async def arecord_attempts(message, attempts, timings) -> None:
    """What a reply's end does (threads/replies.py): record on a thread, then count."""
    count_calls(await sync_to_async(record_attempts)(message, attempts, timings), message)


@pytest.fixture
async def reply():
    org = await sync_to_async(make_org)("acme")
    thread = await sync_to_async(make_thread)(org)
    return (await sync_to_async(make_exchange)(thread))[1]


async def test_cost_is_tokens_times_the_price_at_the_time(reply):
    # gpt-4o: $2.50 in, $10 out per million tokens.
    usage = Usage(prompt_tokens=1000, completion_tokens=500)
    await arecord_attempts(reply, [_attempt("gpt-4o", 1, usage=usage, ttft_ms=300)], TIMINGS)
    call = await ProviderCall.objects.aget()
    assert call.cost_usd == Decimal("0.0075")  # 1000*2.5/1e6 + 500*10/1e6
    assert call.priced
    # A later price edit does not rewrite what was recorded.
    await CatalogModel.objects.filter(provider="openai", model="gpt-4o").aupdate(
        input_per_mtok=Decimal("100")
    )
    await call.arefresh_from_db()
    assert call.cost_usd == Decimal("0.0075")


async def test_unpriced_models_are_flagged_not_free(reply):
    usage = Usage(prompt_tokens=10, completion_tokens=10, vendor_cost_usd=Decimal("0.02"))
    await arecord_attempts(reply, [_attempt("gpt-3.5-turbo", 1, usage=usage)], TIMINGS)
    call = await ProviderCall.objects.aget()
    assert call.cost_usd is None
    assert not call.priced
    assert call.vendor_cost_usd == Decimal("0.02")


async def test_a_retry_then_success_makes_two_rows(reply):
    attempts = [
        _attempt(
            "gpt-4o",
            1,
            "rate_limited",
            http_status=429,
            error_class="rate_limited",
            error_message="slow down",
            latency_ms=80,
        ),
        _attempt("gpt-4o", 2, queued_ms=12, ttft_ms=350, latency_ms=1200, usage=Usage(10, 20)),
    ]
    await arecord_attempts(reply, attempts, TIMINGS)
    first, second = [c async for c in ProviderCall.objects.order_by("number")]
    assert (first.outcome, first.http_status, first.error_class) == (
        "rate_limited",
        429,
        "rate_limited",
    )
    assert not first.is_retry and not first.final
    assert first.overhead_ms is None
    assert second.is_retry and second.final and not second.is_fallback
    assert (second.queued_ms, second.ttft_ms, second.latency_ms) == (12, 350, 1200)
    assert (second.overhead_ms, second.reply_ttft_ms, second.reply_total_ms) == (3, 420, 2100)
    assert (
        second.org_id
        == (await Message.objects.select_related("thread").aget(pk=reply.pk)).thread.org_id
    )
    assert second.message_id == reply.pk


async def test_a_fallback_is_marked(reply):
    attempts = [
        _attempt("gpt-4o", 1, "error", http_status=500, error_class="retryable"),
        _attempt("gpt-4o", 2, "timeout", error_class="deadline"),
        _attempt(
            "claude-sonnet-4-5",
            3,
            provider="anthropic",
            is_fallback=True,
            usage=Usage(5, 5, estimated=True),
        ),
    ]
    await arecord_attempts(reply, attempts, TIMINGS)
    rows = [c async for c in ProviderCall.objects.order_by("number")]
    assert [(r.provider, r.outcome, r.is_retry, r.is_fallback) for r in rows] == [
        ("openai", "error", False, False),
        ("openai", "timeout", True, False),
        ("anthropic", "ok", False, True),
    ]
    assert rows[2].tokens_estimated
    assert rows[2].cost_usd == Decimal("0.00009")  # 5*3/1e6 + 5*15/1e6


async def test_it_counts_the_attempts_for_prometheus(reply):
    sample = metrics.requests.labels("openai", "gpt-4o", "acme", "ok")
    before = sample._value.get()
    await arecord_attempts(reply, [_attempt("gpt-4o", 1, usage=Usage(1, 1))], TIMINGS)
    assert sample._value.get() == before + 1


async def test_database_errors_never_reach_the_reply(reply, caplog):
    with mock.patch("threads.rows.insert", side_effect=DatabaseError("db down")):
        await arecord_attempts(reply, [_attempt("gpt-4o", 1)], TIMINGS)
    assert "could not record" in caplog.text
    assert not await ProviderCall.objects.aexists()


async def test_a_demo_reply_records_its_attempt(generations):
    org = await sync_to_async(make_org)("acme")
    thread = await sync_to_async(make_thread)(org)
    _, reply, _ = await sync_to_async(add_exchange)(
        thread, content="Hello", provider="demo", model="demo-chat"
    )
    await replies.start(reply)
    call = await ProviderCall.objects.aget()
    assert (call.provider, call.model, call.outcome, call.number) == ("demo", "demo-chat", "ok", 1)
    assert call.final and call.ttft_ms is not None and call.latency_ms is not None
    assert call.reply_total_ms is not None
    assert call.cost_usd == Decimal(0) and call.priced
    assert call.completion_tokens > 0
