from __future__ import annotations

import time
from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse

from . import dashboard, rollups
from .models import Budget, Dashboard, Probe, ProviderCall


class _OrgScopedAdmin(admin.ModelAdmin):
    """Staff who administer an organisation see its rows; superusers see everything."""

    def has_module_permission(self, request: HttpRequest) -> bool:
        return dashboard.may_see_dashboard(request.user)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return dashboard.may_see_dashboard(request.user)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        qs = super().get_queryset(request)
        orgs = dashboard.dashboard_orgs(request.user)
        return qs if orgs is None else qs.filter(org__in=orgs)


@admin.register(Dashboard)
class DashboardAdmin(_OrgScopedAdmin):
    """Cost and latency at a glance, from rollups, in one server-rendered page."""

    change_list_template = "admin/telemetry/dashboard.html"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        # The change list machinery only needs a queryset; the figures come from `build`.
        return super().get_queryset(request).none()

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        started = time.perf_counter()
        rollups.catch_up()
        context = dashboard.build(request.GET, request.user)
        context["build_ms"] = round((time.perf_counter() - started) * 1000)
        # Our own query parameters are not model fields: keep the ChangeList from seeing them.
        request.GET = request.GET.copy()
        for name in ("range", "start", "end", "org", "provider", "model"):
            request.GET.pop(name, None)
        return super().changelist_view(request, {**(extra_context or {}), **context})


@admin.register(ProviderCall)
class ProviderCallAdmin(_OrgScopedAdmin):
    list_display = [
        "started",
        "org",
        "provider",
        "model",
        "number",
        "outcome",
        "http_status",
        "error_class",
        "ttft_ms",
        "latency_ms",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
        "is_fallback",
    ]
    list_filter = ["outcome", "provider", "is_fallback", "is_retry"]
    list_select_related = ["org"]
    show_full_result_count = False  # a million rows: no COUNT(*) per page view
    raw_id_fields = ["org", "thread", "message"]
    ordering = ["-id"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Budget)
class BudgetAdmin(_OrgScopedAdmin):
    list_display = ["org", "monthly_usd", "updated"]
    list_select_related = ["org"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return dashboard.may_see_dashboard(request.user)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return dashboard.may_see_dashboard(request.user)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return dashboard.may_see_dashboard(request.user)

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "org":
            orgs = dashboard.dashboard_orgs(request.user)
            if orgs is not None:
                kwargs["queryset"] = orgs
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


@admin.register(Probe)
class ProbeAdmin(admin.ModelAdmin):
    list_display = ["checked", "ok", "failures"]
    list_filter = ["ok"]

    def has_module_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.is_superuser)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.is_superuser)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
