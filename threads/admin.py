from __future__ import annotations

from django.contrib import admin

from .models import ApiKey, Membership, Message, Organization, Thread


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "created"]
    search_fields = ["slug", "name"]
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "org", "role", "created"]
    list_filter = ["role", "org"]
    list_select_related = ["user", "org"]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["prefix", "name", "org", "created", "last_used", "revoked"]
    list_filter = ["org"]
    readonly_fields = ["prefix", "hashed", "created", "last_used"]
    list_select_related = ["org"]
    search_fields = ["prefix", "name"]

    def has_add_permission(self, request: object) -> bool:
        # A key's raw value is shown once, by `manage.py create_api_key`.
        return False


class MessageInline(admin.TabularInline):
    model = Message
    extra = 0
    fields = ["role", "status", "content", "model", "total_tokens", "cost_usd", "ttft_ms"]
    readonly_fields = fields
    show_change_link = True
    fk_name = "thread"


@admin.register(Thread)
class ThreadAdmin(admin.ModelAdmin):
    list_display = ["__str__", "org", "creator", "updated", "archived"]
    list_filter = ["archived", "org"]
    search_fields = ["title"]
    list_select_related = ["org", "creator"]
    inlines = [MessageInline]


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = [
        "code",
        "role",
        "status",
        "thread",
        "model",
        "total_tokens",
        "cost_usd",
        "ttft_ms",
        "latency_ms",
        "created",
    ]
    list_filter = ["role", "status", "provider"]
    search_fields = ["content", "code"]
    list_select_related = ["thread"]
    raw_id_fields = ["thread", "reply_to", "author"]
