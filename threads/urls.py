from __future__ import annotations

from django.urls import path

from . import views

app_name = "threads"

urlpatterns = [
    path("", views.index, name="index"),
    path("t/new", views.new_thread, name="new"),
    path("t/<uuid:code>/", views.thread_detail, name="detail"),
    path("t/<uuid:code>/send", views.send, name="send"),
    path("t/<uuid:code>/rename", views.rename, name="rename"),
    path("t/<uuid:code>/archive", views.archive, name="archive"),
    path("t/<uuid:code>/delete", views.delete, name="delete"),
    path("t/<uuid:code>/export.<str:fmt>", views.export, name="export"),
    path("search", views.search, name="search"),
    path("m/<uuid:code>/cancel", views.cancel, name="cancel"),
    path("m/<uuid:code>/regenerate", views.regenerate, name="regenerate"),
    path("org/switch", views.switch_org, name="switch-org"),
]
