from __future__ import annotations

from django.urls import path

from . import views

app_name = "threads"

urlpatterns = [
    path("", views.index, name="index"),
    path("t/new", views.new_thread, name="new"),
    path("t/<uuid:code>/", views.thread_detail, name="detail"),
    path("t/<uuid:code>/send", views.send, name="send"),
    path("m/<uuid:code>/cancel", views.cancel, name="cancel"),
    path("org/switch", views.switch_org, name="switch-org"),
]
