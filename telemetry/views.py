from __future__ import annotations

import hmac
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.http import require_GET

from . import dashboard, histograms, rollups
from .health import check_readiness, is_ready
from .metrics import exposition
from .models import ProviderCall, Rollup


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """The process is alive and serving requests."""
    return JsonResponse({"status": "ok"})


@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """Every dependency is reachable; 503 names the ones that are not."""
    results = check_readiness()
    ready = is_ready(results)
    return JsonResponse(
        {"status": "ok" if ready else "unavailable", "checks": results},
        status=200 if ready else 503,
    )


def _bearer(request: HttpRequest) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _is_metrics_token(token: str) -> bool:
    expected = settings.METRICS_TOKEN
    return bool(expected and token) and hmac.compare_digest(token.encode(), expected.encode())


def _unauthorized(message: str) -> JsonResponse:
    response = JsonResponse({"error": {"code": "unauthorized", "message": message}}, status=401)
    response["WWW-Authenticate"] = "Bearer"
    return response


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus text format: METRICS_TOKEN as a bearer token, or a staff session."""
    if not (_is_metrics_token(_bearer(request)) or request.user.is_staff):
        return _unauthorized("Send METRICS_TOKEN as a Bearer token, or sign in as staff.")
    body, content_type = exposition()
    return HttpResponse(body, content_type=content_type)


def _api_scope(request: HttpRequest) -> tuple[bool, Any]:
    """(allowed, organisations): None means every organisation."""
    from threads.models import ApiKey

    token = _bearer(request)
    if token:
        if _is_metrics_token(token):
            return True, None
        key = ApiKey.objects.active().filter(hashed=ApiKey.hash(token)).first()
        return (True, [key.org_id]) if key is not None else (False, None)
    if dashboard.may_see_dashboard(request.user):
        return True, dashboard.dashboard_orgs(request.user)
    return False, None


def _check(value: float | None, name: str) -> dict[str, Any]:
    target = dashboard.TARGETS.get(name)
    return {
        "value": value,
        "target": None if target is None else {"op": target[0], "value": target[1]},
        "ok": dashboard.meets(name, value),
    }


def window_figures(orgs: Any, minutes: int) -> dict[str, Any]:
    """P50/P95 TTFT and latency, error rate and throughput over the last `minutes`."""
    now = timezone.now()
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=minutes - 1)
    rows = Rollup.objects.window(Rollup.Granularity.MINUTE, start, now + timedelta(minutes=1), orgs)
    ttft, latency = histograms.empty(), histograms.empty()
    requests = errors = cancelled = 0
    for r in rows.values("requests", "errors", "cancelled", "ttft_hist", "latency_hist"):
        requests += r["requests"]
        errors += r["errors"]
        cancelled += r["cancelled"]
        histograms.merge(ttft, r["ttft_hist"])
        histograms.merge(latency, r["latency_hist"])
    counted = requests - cancelled
    elapsed_min = max((now - start).total_seconds() / 60, 1 / 60)
    return {
        "from": start.isoformat(),
        "to": now.isoformat(),
        "requests": requests,
        "ttft_p50_ms": _check(histograms.percentile(ttft, 50), "ttft_p50"),
        "ttft_p95_ms": _check(histograms.percentile(ttft, 95), "ttft_p95"),
        "latency_p50_ms": _check(histograms.percentile(latency, 50), "latency_p50"),
        "latency_p95_ms": _check(histograms.percentile(latency, 95), "latency_p95"),
        "error_rate": _check(errors / counted if counted else None, "error_rate"),
        "throughput_per_min": _check(round(requests / elapsed_min, 3), "throughput"),
    }


@require_GET
def api_metrics(request: HttpRequest) -> JsonResponse:
    """Service figures for the last 5 minutes and hour, each against its target.

    Auth: a staff session (their organisations), METRICS_TOKEN (all) or an organisation's
    API key (that organisation), as a Bearer token. Read-only.
    """
    allowed, orgs = _api_scope(request)
    if not allowed:
        return _unauthorized("Send an API key or METRICS_TOKEN as a Bearer token.")
    rollups.catch_up()
    pending = ProviderCall.objects.pending().exists()
    return JsonResponse(
        {
            "windows": {"5m": window_figures(orgs, 5), "1h": window_figures(orgs, 60)},
            # With a worker, beat folds every minute: the newest minute may be missing.
            "complete": not pending,
        }
    )
