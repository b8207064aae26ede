from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("metrics", views.metrics, name="metrics"),
    # Also routed in chatproject/urls.py, ahead of the NinjaAPI that owns "api/".
    path("api/metrics", views.api_metrics, name="api-metrics"),
]
