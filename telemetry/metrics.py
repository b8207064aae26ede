"""Prometheus metrics: recorded here, served by the /metrics view.

Several processes (daphne instances, Celery workers) each count on their own. Set
PROMETHEUS_MULTIPROC_DIR to a directory shared by all processes of one host, emptied before
they start: prometheus_client then keeps values in files there and /metrics sums them. Without
it, the default registry serves this process's values only.

Labels stay few (provider, model, organisation, outcome, error class) so cardinality stays
bounded; histograms carry provider and model only.

Other code reports live state through:

- `active_streams.inc()` / `.dec()` (or `with track_stream():`) around a reply's generation;
- `queue_depth.inc()` / `.dec()` (or `with track_queued():`) while a reply waits for a slot;
- `record_cooldown(provider, model)` when a cooling model is passed over.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

if TYPE_CHECKING:
    from .models import ProviderCall

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
# Seconds; the service targets (1.5 s, 3.5 s, 6 s) are bounds so pass/fail reads off exactly.
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 3.5, 5.0, 6.0, 10.0, 20.0, 30.0, 60.0)
OVERHEAD_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

MODEL = ["provider", "model"]

requests = Counter(
    "llm_requests",
    "Provider attempts by outcome.",
    ["provider", "model", "organisation", "outcome"],
)
errors = Counter("llm_errors", "Failed provider attempts by error class.", [*MODEL, "error_class"])
ttft = Histogram(
    "llm_ttft_seconds", "Upstream: request sent to first token.", MODEL, buckets=LATENCY_BUCKETS
)
latency = Histogram(
    "llm_latency_seconds", "Upstream: request sent to end.", MODEL, buckets=LATENCY_BUCKETS
)
overhead = Histogram(
    "llm_overhead_seconds",
    "Ours: first upstream token to first frame sent to the client.",
    buckets=OVERHEAD_BUCKETS,
)
queue_wait = Histogram(
    "llm_queue_wait_seconds", "Waiting for a rate-limit slot.", MODEL, buckets=LATENCY_BUCKETS
)
tokens = Counter("llm_tokens", "Tokens.", [*MODEL, "organisation", "kind"])
cost = Counter("llm_cost_usd", "Cost at list price, US dollars.", [*MODEL, "organisation"])
unpriced = Counter("llm_unpriced", "Attempts of models with no price.", MODEL)
retries = Counter("llm_retries", "Retries of the same model.", MODEL)
fallbacks = Counter("llm_fallbacks", "Attempts of a fallback model.", MODEL)
cooldowns = Counter("llm_cooldowns", "Times a cooling model was passed over.", MODEL)
active_streams = Gauge(
    "llm_active_streams", "Replies being generated.", multiprocess_mode="livesum"
)
queue_depth = Gauge(
    "llm_queue_depth", "Replies waiting for a rate-limit slot.", multiprocess_mode="livesum"
)


@contextmanager
def track_stream() -> Iterator[None]:
    active_streams.inc()
    try:
        yield
    finally:
        active_streams.dec()


@contextmanager
def track_queued() -> Iterator[None]:
    queue_depth.inc()
    try:
        yield
    finally:
        queue_depth.dec()


def record_cooldown(provider: str, model: str) -> None:
    cooldowns.labels(provider, model).inc()


def observe_calls(calls: list[ProviderCall], org_slug: str) -> None:
    """Count one reply's attempts (called by the recorder, after they are saved)."""
    for call in calls:
        key = (call.provider, call.model)
        requests.labels(*key, org_slug, call.outcome).inc()
        if call.outcome in ("error", "rate_limited", "timeout"):
            errors.labels(*key, call.error_class or call.outcome).inc()
        if call.ttft_ms is not None:
            ttft.labels(*key).observe(call.ttft_ms / 1000)
        if call.latency_ms is not None:
            latency.labels(*key).observe(call.latency_ms / 1000)
        queue_wait.labels(*key).observe(call.queued_ms / 1000)
        if call.prompt_tokens:
            tokens.labels(*key, org_slug, "prompt").inc(call.prompt_tokens)
        if call.completion_tokens:
            tokens.labels(*key, org_slug, "completion").inc(call.completion_tokens)
        if call.cost_usd is not None:
            cost.labels(*key, org_slug).inc(float(call.cost_usd))
        elif not call.priced:
            unpriced.labels(*key).inc()
        if call.is_retry:
            retries.labels(*key).inc()
        if call.is_fallback and not call.is_retry:
            fallbacks.labels(*key).inc()
        if call.final and call.overhead_ms is not None:
            overhead.observe(call.overhead_ms / 1000)


def exposition() -> tuple[bytes, str]:
    """The text format for a scrape: every process's values in multiprocess mode."""
    if MULTIPROCESS:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


if MULTIPROCESS:
    # A live-sum gauge must forget a process that ended, or its streams count forever.
    atexit.register(lambda: multiprocess.mark_process_dead(os.getpid()))
