"""Readiness checks: is every service a request needs reachable?"""

from __future__ import annotations

from django.conf import settings
from django.db import connection

TIMEOUT_S = 2.0


def _database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _redis() -> None:
    import redis

    client = redis.Redis.from_url(
        settings.REDIS_URL, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S
    )
    try:
        client.ping()
    finally:
        client.close()


def _broker() -> None:
    from chatproject.celery import app

    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=TIMEOUT_S)


def check_readiness() -> dict[str, str]:
    """Each dependency's state: "ok", "not used" or what went wrong."""
    results: dict[str, str] = {}
    checks = {"database": _database}
    if settings.REDIS_URL:
        checks["redis"] = _redis
    if settings.CELERY_TASK_ALWAYS_EAGER or settings.CELERY_BROKER_URL.startswith("memory"):
        results["broker"] = "not used"
    else:
        checks["broker"] = _broker
    if not settings.REDIS_URL:
        results["redis"] = "not used"
    for name, check in checks.items():
        try:
            check()
        except Exception as exc:
            results[name] = f"{type(exc).__name__}: {exc}"[:300]
        else:
            results[name] = "ok"
    return dict(sorted(results.items()))


def is_ready(results: dict[str, str]) -> bool:
    return all(state in ("ok", "not used") for state in results.values())
