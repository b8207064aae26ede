from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from telemetry import histograms, rollups
from telemetry.models import ProviderCall, Rollup
from tests.factories import make_call, make_org

pytestmark = [pytest.mark.django_db]

# Recent (older rows skip the minute rollups they would outlive), mid-hour, mid-minute.
T0 = timezone.now().replace(minute=10, second=30, microsecond=0) - timedelta(hours=2)


def _minute(**filters) -> Rollup:
    return Rollup.objects.get(granularity="minute", **filters)


def test_folding_twice_counts_once():
    org = make_org()
    make_call(org, started=T0, ttft_ms=100, latency_ms=1000)
    make_call(
        org,
        started=T0 + timedelta(seconds=5),
        outcome="error",
        error_class="server_error",
        final=False,
    )
    assert rollups.fold_pending() == 2
    assert rollups.fold_pending() == 0
    minute = _minute(start=T0.replace(second=0))
    assert minute.requests == 2
    assert minute.errors == 1
    assert minute.errors_by_class == {"server_error": 1}
    assert minute.replies == 1
    assert minute.cost_usd == Decimal("0.002")
    assert histograms.count(minute.ttft_hist) == 2
    hour = Rollup.objects.get(granularity="hour")
    day = Rollup.objects.get(granularity="day")
    assert hour.requests == day.requests == 2
    assert hour.start == T0.replace(minute=0, second=0)
    assert day.start == T0.replace(hour=0, minute=0, second=0)


def test_a_late_row_is_added_to_its_existing_bucket():
    org = make_org()
    make_call(org, started=T0, latency_ms=1000)
    rollups.fold_pending()
    make_call(org, started=T0, latency_ms=3000, prompt_tokens=7, completion_tokens=3)
    rollups.fold_pending()
    minute = _minute()
    assert minute.requests == 2
    assert minute.prompt_tokens == 107
    assert histograms.count(minute.latency_hist) == 2
    assert Rollup.objects.count() == 3


def test_buckets_are_per_org_provider_and_model():
    acme, globex = make_org("acme"), make_org("globex")
    make_call(acme, started=T0)
    make_call(acme, started=T0, model="other")
    make_call(globex, started=T0)
    make_call(acme, started=T0 + timedelta(minutes=1))
    rollups.fold_pending(batch=2)  # across batches too
    assert Rollup.objects.filter(granularity="minute").count() == 4
    assert Rollup.objects.get(granularity="hour", org=acme, model="demo-chat").requests == 2


def test_retries_fallbacks_and_vendor_costs_are_summed():
    org = make_org()
    make_call(org, started=T0, outcome="rate_limited", final=False, cost_usd=None)
    make_call(org, started=T0, number=2, is_retry=True, vendor_cost_usd=Decimal("0.0011"))
    make_call(org, started=T0, number=3, is_fallback=True, priced=False, cost_usd=None)
    rollups.fold_pending()
    minute = _minute()
    assert (minute.retries, minute.fallbacks, minute.rate_limited, minute.unpriced) == (1, 1, 1, 1)
    assert minute.vendor_cost_usd == Decimal("0.0011")
    assert minute.vendor_ours_usd == Decimal("0.001")


def test_prune_keeps_unfolded_and_recent_rows(settings):
    settings.TELEMETRY_RETENTION_DAYS = 40
    org = make_org()
    now = timezone.now()
    make_call(org, started=now - timedelta(days=41))
    make_call(org, started=now - timedelta(days=39))
    rollups.fold_pending()
    make_call(org, started=now - timedelta(days=50))  # not folded yet: kept
    deleted = rollups.prune(now)
    assert deleted["calls"] == 1
    assert ProviderCall.objects.count() == 2
    # Rows that old are folded into hours (kept 90 days) and days only.
    assert set(Rollup.objects.values_list("granularity", flat=True)) == {"hour", "day"}
    make_call(org, started=now - timedelta(days=3))
    rollups.fold_pending()
    assert Rollup.objects.filter(granularity="minute").count() == 0
    later = now + timedelta(days=95)
    rollups.prune(later)
    assert set(Rollup.objects.values_list("granularity", flat=True)) == {"day"}


def test_catch_up_folds_in_the_embedded_default(settings):
    settings.CELERY_TASK_ALWAYS_EAGER = True
    make_call(make_org(), started=T0)
    rollups.catch_up()
    assert not ProviderCall.objects.pending().exists()


def test_the_celery_task_folds():
    from telemetry.tasks import fold_rollups

    make_call(make_org(), started=T0)
    assert fold_rollups.apply().get() == 1
