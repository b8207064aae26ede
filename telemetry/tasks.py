from __future__ import annotations

from celery import shared_task

from . import rollups
from .health import check_readiness, is_ready
from .models import Probe


@shared_task
def fold_rollups() -> int:
    return rollups.fold_pending()


@shared_task
def prune_telemetry() -> dict[str, int]:
    return rollups.prune()


@shared_task
def probe_readiness() -> bool:
    results = check_readiness()
    ok = is_ready(results)
    Probe.objects.create(
        ok=ok, failures={k: v for k, v in results.items() if v not in ("ok", "not used")}
    )
    return ok
