from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import models
from django.db.models import Count, Min, Q, Sum
from django.utils import timezone

from threads.models import Message, Organization, Thread


class ProviderCallQuerySet(models.QuerySet["ProviderCall"]):
    def pending(self) -> ProviderCallQuerySet:
        """Rows not yet folded into rollups."""
        return self.filter(folded=False)

    def for_orgs(self, orgs: Any) -> ProviderCallQuerySet:
        return self if orgs is None else self.filter(org__in=orgs)

    def spend_since(self, org: Organization, since: datetime) -> Decimal:
        total = self.filter(org=org, started__gte=since).aggregate(s=Sum("cost_usd"))["s"]
        return total or Decimal(0)


class ProviderCall(models.Model):
    """One provider request: retries and fallbacks each get their own row."""

    class Outcome(models.TextChoices):
        OK = "ok"
        ERROR = "error"
        RATE_LIMITED = "rate_limited"
        TIMEOUT = "timeout"
        CANCELLED = "cancelled"

    FAILED = (Outcome.ERROR, Outcome.RATE_LIMITED, Outcome.TIMEOUT)

    org = models.ForeignKey(Organization, models.CASCADE, related_name="+")
    thread = models.ForeignKey(Thread, models.SET_NULL, null=True, blank=True, related_name="+")
    message = models.ForeignKey(Message, models.SET_NULL, null=True, blank=True, related_name="+")
    provider = models.CharField(max_length=32)
    model = models.CharField(max_length=200)
    number = models.PositiveSmallIntegerField(help_text="1 for the reply's first attempt.")
    outcome = models.CharField(max_length=12, choices=Outcome.choices)
    http_status = models.PositiveSmallIntegerField(null=True, blank=True)
    error_class = models.CharField(max_length=64, blank=True)
    error_message = models.CharField(max_length=500, blank=True)
    is_retry = models.BooleanField(default=False, help_text="Another try of the same model.")
    is_fallback = models.BooleanField(default=False)
    started = models.DateTimeField()
    # Upstream, per attempt: waiting for a slot, request sent -> first token, -> end.
    queued_ms = models.PositiveIntegerField(default=0)
    ttft_ms = models.PositiveIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    # Per reply, on its last attempt only (`final`): what the person saw, and our own share.
    final = models.BooleanField(default=False)
    overhead_ms = models.PositiveIntegerField(
        null=True, blank=True, help_text="Ours: first upstream token -> first frame sent."
    )
    reply_ttft_ms = models.PositiveIntegerField(null=True, blank=True)
    reply_total_ms = models.PositiveIntegerField(null=True, blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    reasoning_tokens = models.PositiveIntegerField(default=0)
    tokens_estimated = models.BooleanField(default=False)
    # Tokens x the model's price when the attempt ran; None when the model has no price.
    cost_usd = models.DecimalField(max_digits=14, decimal_places=8, null=True, blank=True)
    priced = models.BooleanField(default=True)
    vendor_cost_usd = models.DecimalField(max_digits=14, decimal_places=8, null=True, blank=True)
    folded = models.BooleanField(default=False)
    created = models.DateTimeField(default=timezone.now)

    objects = ProviderCallQuerySet.as_manager()

    class Meta:
        indexes = [
            # Budgets: an organisation's spend since the start of the month (cost_usd last so
            # the sum reads the index alone).
            models.Index(fields=["org", "started", "cost_usd"], name="call_org_started"),
            # The fold: rows not yet in rollups, oldest first.
            models.Index(fields=["id"], condition=Q(folded=False), name="call_pending"),
            # Pruning raw rows past retention.
            models.Index(fields=["started"], name="call_started"),
        ]

    def __str__(self) -> str:
        return f"{self.provider}:{self.model} #{self.number} {self.outcome}"


class RollupQuerySet(models.QuerySet["Rollup"]):
    def window(
        self, granularity: str, start: datetime, end: datetime, orgs: Any = None
    ) -> RollupQuerySet:
        qs = self.filter(granularity=granularity, start__gte=start, start__lt=end)
        return qs if orgs is None else qs.filter(org__in=orgs)


class Rollup(models.Model):
    """Attempts folded per minute, hour or day by organisation, provider and model."""

    class Granularity(models.TextChoices):
        MINUTE = "minute"
        HOUR = "hour"
        DAY = "day"

    granularity = models.CharField(max_length=6, choices=Granularity.choices)
    start = models.DateTimeField()
    org = models.ForeignKey(Organization, models.CASCADE, related_name="+")
    provider = models.CharField(max_length=32)
    model = models.CharField(max_length=200)

    requests = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0, help_text="error, rate_limited, timeout")
    rate_limited = models.PositiveIntegerField(default=0)
    timeouts = models.PositiveIntegerField(default=0)
    cancelled = models.PositiveIntegerField(default=0)
    retries = models.PositiveIntegerField(default=0)
    fallbacks = models.PositiveIntegerField(default=0)
    replies = models.PositiveIntegerField(default=0, help_text="Replies answered by this model.")
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    reasoning_tokens = models.BigIntegerField(default=0)
    estimated = models.PositiveIntegerField(default=0, help_text="Attempts with estimated tokens.")
    cost_usd = models.DecimalField(max_digits=18, decimal_places=8, default=Decimal(0))
    unpriced = models.PositiveIntegerField(default=0, help_text="Attempts with no price.")
    # Where the vendor reported a cost: theirs, and ours for the same attempts.
    vendor_cost_usd = models.DecimalField(max_digits=18, decimal_places=8, default=Decimal(0))
    vendor_ours_usd = models.DecimalField(max_digits=18, decimal_places=8, default=Decimal(0))
    queued_ms = models.BigIntegerField(default=0)
    ttft_hist = models.JSONField(default=list)
    latency_hist = models.JSONField(default=list)
    overhead_hist = models.JSONField(default=list)
    reply_ttft_hist = models.JSONField(default=list)
    errors_by_class = models.JSONField(default=dict)

    objects = RollupQuerySet.as_manager()

    class Meta:
        constraints = [
            # Also the index behind the dashboard's range scans (granularity, start).
            models.UniqueConstraint(
                fields=["granularity", "start", "org", "provider", "model"], name="rollup_key"
            )
        ]

    def __str__(self) -> str:
        return f"{self.granularity} {self.start:%Y-%m-%d %H:%M} {self.org_id} {self.provider}:{self.model}"


class Dashboard(Rollup):
    """The admin dashboard's entry in the admin index (a proxy: no table of its own)."""

    class Meta:
        proxy = True
        verbose_name = "dashboard"
        verbose_name_plural = "dashboard"


class ProbeQuerySet(models.QuerySet["Probe"]):
    def uptime(self, start: datetime, end: datetime) -> tuple[float | None, int, int]:
        """(uptime fraction, good probes, expected probes) between start and end.

        A probe is expected every minute from the first one in the range: a minute with no
        probe (the beat or the whole site was down) counts as down.
        """
        figures = self.filter(checked__gte=start, checked__lt=end).aggregate(
            first=Min("checked"), good=Count("pk", filter=Q(ok=True)), recorded=Count("pk")
        )
        first, good, recorded = figures["first"], figures["good"], figures["recorded"]
        if first is None:
            return None, 0, 0
        expected = max(recorded, int((min(end, timezone.now()) - first).total_seconds() // 60) + 1)
        return good / expected, good, expected


class Probe(models.Model):
    """One readiness check, recorded every minute by Celery beat; uptime comes from these."""

    checked = models.DateTimeField(default=timezone.now, db_index=True)
    ok = models.BooleanField()
    failures = models.JSONField(default=dict, blank=True)

    objects = ProbeQuerySet.as_manager()

    def __str__(self) -> str:
        return f"{self.checked:%Y-%m-%d %H:%M} {'ok' if self.ok else 'failed'}"


class Budget(models.Model):
    """An organisation's optional monthly spending limit."""

    org = models.OneToOneField(Organization, models.CASCADE, related_name="budget")
    monthly_usd = models.DecimalField(max_digits=12, decimal_places=2)
    updated = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.org}: ${self.monthly_usd}/month"
