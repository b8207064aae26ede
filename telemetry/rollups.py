"""Folds attempt rows into per-minute, per-hour and per-day rollups, and prunes old rows.

Folding is idempotent: a row is added to its buckets and marked `folded` in the same
transaction, and only one fold runs at a time (a PostgreSQL advisory lock; SQLite's write
transactions are serial already), so running it twice counts every row once.

With a Celery worker, beat folds every minute. In the embedded default there is no beat, so
the readers (the dashboard and /api/metrics) call `catch_up()` first: it folds whatever is
pending and, at most once an hour, prunes. That costs nothing on the chat path (a reply stays
one insert) and nothing while nobody looks; what a reader waits for is at most the rows since
the last look, folded in batches.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from . import histograms
from .models import ProviderCall, Rollup

log = logging.getLogger(__name__)

BATCH = 5000
MIN_RETENTION_DAYS = 32
LOCK_KEY = 0x7E1E_F01D  # pg_advisory_xact_lock key of the fold
# How long rollups are kept: minutes serve "the last 5 minutes / hour", hours and days charts.
KEEP = {
    Rollup.Granularity.MINUTE: timedelta(days=2),
    Rollup.Granularity.HOUR: timedelta(days=90),
}
COUNTERS = (
    "requests",
    "errors",
    "rate_limited",
    "timeouts",
    "cancelled",
    "retries",
    "fallbacks",
    "replies",
    "prompt_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "estimated",
    "unpriced",
    "queued_ms",
)
MONEY = ("cost_usd", "vendor_cost_usd", "vendor_ours_usd")
HISTS = ("ttft_hist", "latency_hist", "overhead_hist", "reply_ttft_hist")
FIELDS = (
    "pk",
    "org_id",
    "provider",
    "model",
    "started",
    "outcome",
    "error_class",
    "is_retry",
    "is_fallback",
    "final",
    "queued_ms",
    "ttft_ms",
    "latency_ms",
    "overhead_ms",
    "reply_ttft_ms",
    "prompt_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "tokens_estimated",
    "cost_usd",
    "priced",
    "vendor_cost_usd",
)


@dataclass(slots=True)
class _Acc:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    money: dict[str, Decimal] = field(default_factory=lambda: dict.fromkeys(MONEY, Decimal(0)))
    hists: dict[str, list[int]] = field(
        default_factory=lambda: {h: histograms.empty() for h in HISTS}
    )
    classes: dict[str, int] = field(default_factory=dict)


Key = tuple[str, datetime, int, str, str]


def bucket_starts(when: datetime) -> dict[str, datetime]:
    minute = when.replace(second=0, microsecond=0)
    hour = minute.replace(minute=0)
    return {
        Rollup.Granularity.MINUTE: minute,
        Rollup.Granularity.HOUR: hour,
        Rollup.Granularity.DAY: hour.replace(hour=0),
    }


def _add(acc: _Acc, row: dict[str, Any]) -> None:
    c = acc.counts
    c["requests"] += 1
    outcome = row["outcome"]
    if outcome in ProviderCall.FAILED:
        c["errors"] += 1
        cls = row["error_class"] or outcome
        acc.classes[cls] = acc.classes.get(cls, 0) + 1
    c["rate_limited"] += outcome == ProviderCall.Outcome.RATE_LIMITED
    c["timeouts"] += outcome == ProviderCall.Outcome.TIMEOUT
    c["cancelled"] += outcome == ProviderCall.Outcome.CANCELLED
    c["retries"] += row["is_retry"]
    c["fallbacks"] += row["is_fallback"] and not row["is_retry"]
    c["replies"] += row["final"]
    c["prompt_tokens"] += row["prompt_tokens"]
    c["completion_tokens"] += row["completion_tokens"]
    c["reasoning_tokens"] += row["reasoning_tokens"]
    c["estimated"] += row["tokens_estimated"]
    c["unpriced"] += not row["priced"]
    c["queued_ms"] += row["queued_ms"]
    if row["cost_usd"] is not None:
        acc.money["cost_usd"] += row["cost_usd"]
    if row["vendor_cost_usd"] is not None:
        acc.money["vendor_cost_usd"] += row["vendor_cost_usd"]
        acc.money["vendor_ours_usd"] += row["cost_usd"] or 0
    h = acc.hists
    histograms.add(h["ttft_hist"], row["ttft_ms"])
    histograms.add(h["latency_hist"], row["latency_ms"])
    if row["final"]:
        histograms.add(h["overhead_hist"], row["overhead_ms"])
        histograms.add(h["reply_ttft_hist"], row["reply_ttft_ms"])


def _lock() -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [LOCK_KEY])


def fold_batch(batch: int = BATCH) -> int:
    """Fold up to `batch` pending rows; return how many were folded."""
    with transaction.atomic():
        _lock()
        rows = list(ProviderCall.objects.pending().order_by("pk").values(*FIELDS)[:batch])
        if not rows:
            return 0
        accs: dict[Key, _Acc] = defaultdict(_Acc)
        # Rows older than a granularity keeps are not folded into it: prune would drop it.
        now = timezone.now()
        horizon = {g: now - keep for g, keep in KEEP.items()}
        for row in rows:
            for granularity, start in bucket_starts(row["started"]).items():
                if granularity in horizon and start < horizon[granularity]:
                    continue
                _add(accs[(granularity, start, row["org_id"], row["provider"], row["model"])], row)
        _merge_into_rollups(accs)
        pks = [row["pk"] for row in rows]
        ProviderCall.objects.filter(pk__in=pks).update(folded=True)
    return len(rows)


def _merge_into_rollups(accs: dict[Key, _Acc]) -> None:
    spans: dict[str, tuple[datetime, datetime]] = {}
    for granularity, start, *_ in accs:
        low, high = spans.get(granularity, (start, start))
        spans[granularity] = (min(low, start), max(high, start))
    q = Q()
    for granularity, span in spans.items():
        q |= Q(granularity=granularity, start__range=span)
    existing: dict[Key, Rollup] = {}
    for rollup in Rollup.objects.filter(q, org__in={key[2] for key in accs}):
        existing[
            (rollup.granularity, rollup.start, rollup.org_id, rollup.provider, rollup.model)
        ] = rollup
    to_create: list[Rollup] = []
    to_update: list[Rollup] = []
    for key, acc in accs.items():
        rollup = existing.get(key)
        if rollup is None:
            rollup = Rollup(
                granularity=key[0], start=key[1], org_id=key[2], provider=key[3], model=key[4]
            )
            to_create.append(rollup)
        else:
            to_update.append(rollup)
        for name, value in acc.counts.items():
            setattr(rollup, name, getattr(rollup, name) + value)
        for name, amount in acc.money.items():
            setattr(rollup, name, getattr(rollup, name) + amount)
        for name, hist in acc.hists.items():
            setattr(rollup, name, histograms.compact(histograms.merge(hist, getattr(rollup, name))))
        classes = dict(rollup.errors_by_class)
        for cls, n in acc.classes.items():
            classes[cls] = classes.get(cls, 0) + n
        rollup.errors_by_class = classes
    # Replacing the updated rows is far cheaper than bulk_update's CASE per row and field;
    # the fold lock and the transaction keep it safe.
    Rollup.objects.filter(pk__in=[r.pk for r in to_update]).delete()
    for rollup in to_update:
        rollup.pk = None
    Rollup.objects.bulk_create([*to_create, *to_update], batch_size=1000)


def fold_pending(batch: int = BATCH, limit: int | None = None) -> int:
    """Fold every pending row (or up to `limit`), a batch per transaction."""
    total = 0
    while limit is None or total < limit:
        n = fold_batch(batch)
        total += n
        if n < batch:
            break
    return total


def prune(now: datetime | None = None) -> dict[str, int]:
    """Delete folded rows past TELEMETRY_RETENTION_DAYS and expired minute/hour rollups."""
    now = now or timezone.now()
    # Budgets sum this month's raw rows, so a month is always kept.
    cutoff = now - timedelta(days=max(settings.TELEMETRY_RETENTION_DAYS, MIN_RETENTION_DAYS))
    deleted = {"calls": ProviderCall.objects.filter(started__lt=cutoff, folded=True).delete()[0]}
    for granularity, keep in KEEP.items():
        deleted[granularity] = Rollup.objects.filter(
            granularity=granularity, start__lt=now - keep
        ).delete()[0]
    return deleted


def catch_up() -> None:
    """The embedded default's stand-in for beat: fold now, prune at most hourly.

    Never raises: a reader shows slightly stale figures rather than an error page.
    """
    if not settings.CELERY_TASK_ALWAYS_EAGER:
        return  # beat folds every minute
    try:
        fold_pending()
        if cache.add("telemetry:pruned", 1, 3600):
            prune()
    except Exception:
        log.exception("could not fold telemetry")
