from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html

from .catalog import clear_cache, sync_from_file
from .models import CatalogModel


@admin.register(CatalogModel)
class CatalogModelAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = (
        "__str__",
        "display_name",
        "price",
        "tier",
        "status",
        "context_window",
        "edits",
        "locked",
    )
    list_filter = ("provider", "tier", "status", "locked")
    search_fields = ("model", "display_name")
    readonly_fields = ("edited_fields", "synced", "updated")
    actions = ("forget_edits", "sync_from_catalog_file")
    fieldsets = (
        (None, {"fields": ("provider", "model", "display_name", "status", "replacement")}),
        (
            "Price",
            {"fields": ("input_per_mtok", "output_per_mtok", "tier", "source", "notes")},
        ),
        (
            "Limits and fallbacks",
            {
                "fields": (
                    "context_window",
                    "max_output_tokens",
                    "capabilities",
                    "deprecation_date",
                    "fallbacks",
                    "rpm",
                    "concurrency",
                )
            },
        ),
        ("Sync", {"fields": ("locked", "edited_fields", "synced", "updated")}),
    )

    @admin.display(description="USD / 1M tokens (in / out)")
    def price(self, obj: CatalogModel) -> str:
        if not obj.priced:
            # Never blank or zero: an unpriced model must not look free.
            return format_html('<strong title="{}">unpriced</strong>', "No price is known")
        return f"{obj.input_per_mtok.normalize():f} / {obj.output_per_mtok.normalize():f}"  # type: ignore[union-attr]

    @admin.display(description="Admin edits")
    def edits(self, obj: CatalogModel) -> str:
        return ", ".join(obj.edited_fields) or "–"

    def save_model(self, request: HttpRequest, obj: CatalogModel, form: Any, change: bool) -> None:
        obj.mark_edited(form.changed_data)
        obj.updated = timezone.now()
        super().save_model(request, obj, form, change)

    @admin.action(description="Forget admin edits (the next sync restores catalog.json values)")
    def forget_edits(self, request: HttpRequest, queryset: QuerySet[CatalogModel]) -> None:
        count = queryset.update(edited_fields=[], locked=False)
        clear_cache()  # update() sends no post_save
        self.message_user(request, f"Forgot the edits of {count} models.", messages.SUCCESS)

    @admin.action(description="Sync all models from catalog.json (keeps admin edits)")
    def sync_from_catalog_file(
        self, request: HttpRequest, queryset: QuerySet[CatalogModel]
    ) -> None:
        self.message_user(request, f"Catalog synced: {sync_from_file()}.", messages.SUCCESS)
