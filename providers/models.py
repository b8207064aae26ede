from __future__ import annotations

from typing import Any

from django.db import models
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django.utils import timezone

# Fields that `sync_models` copies from catalog.json. An admin edit to one of them is recorded
# in `edited_fields` so the next sync leaves that field alone.
SYNCED_FIELDS = (
    "display_name",
    "context_window",
    "max_output_tokens",
    "input_per_mtok",
    "output_per_mtok",
    "tier",
    "capabilities",
    "status",
    "deprecation_date",
    "replacement",
    "source",
    "notes",
    "fallbacks",
    "rpm",
    "concurrency",
)


class CatalogModel(models.Model):
    """One model of one provider, as the app prices and validates it."""

    class Tier(models.TextChoices):
        FREE = "free"
        PAID = "paid"

    class Status(models.TextChoices):
        CURRENT = "current"
        DEPRECATED = "deprecated"

    provider = models.CharField(max_length=32)
    model = models.CharField(max_length=200, help_text="The vendor's model id.")
    display_name = models.CharField(max_length=200)
    context_window = models.PositiveIntegerField(null=True, blank=True)
    max_output_tokens = models.PositiveIntegerField(null=True, blank=True)
    input_per_mtok = models.DecimalField(
        max_digits=12,
        decimal_places=6,
        null=True,
        blank=True,
        help_text="USD per million input tokens. Empty means unpriced (never shown as free).",
    )
    output_per_mtok = models.DecimalField(
        max_digits=12,
        decimal_places=6,
        null=True,
        blank=True,
        help_text="USD per million output tokens. Empty means unpriced.",
    )
    tier = models.CharField(max_length=8, choices=Tier.choices, default=Tier.PAID)
    capabilities = models.JSONField(default=list, blank=True, help_text='e.g. ["streaming"]')
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.CURRENT)
    deprecation_date = models.DateField(null=True, blank=True)
    replacement = models.CharField(
        max_length=200, blank=True, help_text="Suggested model id when this one is deprecated."
    )
    source = models.TextField(blank=True, help_text="Where the price comes from.")
    notes = models.TextField(blank=True)
    fallbacks = models.JSONField(
        default=list, blank=True, help_text='Fallback chain, e.g. ["gemini:gemini-2.5-flash"].'
    )
    rpm = models.PositiveIntegerField(
        null=True, blank=True, help_text="Requests per minute (empty: no limit of its own)."
    )
    concurrency = models.PositiveIntegerField(
        null=True, blank=True, help_text="Requests in flight at once (empty: no limit of its own)."
    )
    edited_fields = models.JSONField(
        default=list,
        blank=True,
        help_text="Fields changed in the admin; sync_models never overwrites them.",
    )
    locked = models.BooleanField(
        default=False, help_text="When set, sync_models leaves this row entirely alone."
    )
    synced = models.DateTimeField(null=True, blank=True)
    updated = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["provider", "model"]
        constraints = [
            models.UniqueConstraint(fields=["provider", "model"], name="one_row_per_model")
        ]

    def __str__(self) -> str:
        return f"{self.provider}:{self.model}"

    @property
    def priced(self) -> bool:
        return self.input_per_mtok is not None and self.output_per_mtok is not None

    def mark_edited(self, fields: list[str] | tuple[str, ...]) -> None:
        edited = set(self.edited_fields) | {f for f in fields if f in SYNCED_FIELDS}
        self.edited_fields = sorted(edited)


@receiver([post_save, post_delete], sender=CatalogModel)
def _forget_cached_catalog(**kwargs: Any) -> None:
    # Admin edits take effect at once in this process; other processes within the TTL.
    from .catalog import clear_cache

    clear_cache()
