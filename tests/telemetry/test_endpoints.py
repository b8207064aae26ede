from __future__ import annotations

from datetime import timedelta
from unittest import mock

import pytest
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from telemetry import rollups
from telemetry.models import Probe
from telemetry.tasks import probe_readiness
from tests.factories import make_api_key, make_call, make_org, make_user

pytestmark = [pytest.mark.django_db]


def test_healthz(client):
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_reports_each_dependency(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    checks = response.json()["checks"]
    assert checks["database"] == "ok"
    assert set(checks) == {"database", "redis", "broker"}


def test_readyz_says_what_failed(client):
    with mock.patch("telemetry.health._database", side_effect=OSError("connection refused")):
        response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["database"] == "OSError: connection refused"


def test_the_probe_task_records_readiness():
    assert probe_readiness.apply().get() is True
    probe = Probe.objects.get()
    assert probe.ok and probe.failures == {}


def test_metrics_parse_with_prometheus_own_parser(client, settings):
    settings.METRICS_TOKEN = "s3cret"
    response = client.get("/metrics", headers={"Authorization": "Bearer s3cret"})
    assert response.status_code == 200
    families = {f.name for f in text_string_to_metric_families(response.content.decode())}
    for name in (
        "llm_requests",
        "llm_errors",
        "llm_ttft_seconds",
        "llm_latency_seconds",
        "llm_overhead_seconds",
        "llm_queue_wait_seconds",
        "llm_tokens",
        "llm_cost_usd",
        "llm_retries",
        "llm_fallbacks",
        "llm_cooldowns",
        "llm_active_streams",
        "llm_queue_depth",
    ):
        assert name in families


def test_metrics_need_the_token_or_staff(client, settings):
    settings.METRICS_TOKEN = "s3cret"
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    user = make_user("alice")
    client.force_login(user)
    assert client.get("/metrics").status_code == 401
    user.is_staff = True
    user.save()
    assert client.get("/metrics").status_code == 200


def test_an_empty_token_setting_accepts_no_token(client, settings):
    settings.METRICS_TOKEN = ""
    assert client.get("/metrics", headers={"Authorization": "Bearer "}).status_code == 401


def _figures(client, **headers):
    return client.get("/api/metrics", headers=headers)


def test_api_metrics_with_an_org_key(client):
    acme, globex = make_org("acme"), make_org("globex")
    now = timezone.now()
    for ms in (200, 400, 800):
        make_call(acme, started=now - timedelta(seconds=30), ttft_ms=ms, latency_ms=ms * 4)
    make_call(globex, started=now, ttft_ms=9000, latency_ms=20000, outcome="error")
    rollups.fold_pending()
    response = _figures(client, Authorization=f"Bearer {make_api_key(acme)}")
    assert response.status_code == 200
    five = response.json()["windows"]["5m"]
    assert five["requests"] == 3
    assert five["error_rate"] == {"value": 0.0, "target": {"op": "lt", "value": 0.01}, "ok": True}
    assert five["ttft_p95_ms"]["ok"] is True
    assert five["latency_p50_ms"]["target"] == {"op": "le", "value": 3500}
    assert five["throughput_per_min"]["target"] is None
    assert response.json()["windows"]["1h"]["requests"] == 3


def test_api_metrics_needs_auth(client, settings):
    settings.METRICS_TOKEN = "s3cret"
    assert _figures(client).status_code == 401
    assert _figures(client, Authorization="Bearer sk-chat-unknown").status_code == 401
    assert _figures(client, Authorization="Bearer s3cret").status_code == 200


def test_api_metrics_is_not_swallowed_by_the_ninja_api(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("root", password="x"))
    response = client.get("/api/metrics")
    assert response.status_code == 200
    assert set(response.json()["windows"]) == {"5m", "1h"}
