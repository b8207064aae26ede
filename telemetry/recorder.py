"""Records one row per provider attempt. Telemetry must never break chat."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from providers import catalog

if TYPE_CHECKING:
    from providers.policy import Attempt
    from threads.models import Message

    from .models import ProviderCall

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReplyTimings:
    """Per-stage timings of one reply, in milliseconds (None where the stage never happened)."""

    queued_ms: int | None  # waiting in the rate-limit queue, all attempts together
    upstream_ttft_ms: int | None  # the answering attempt: request sent -> first token
    overhead_ms: int | None  # ours: first upstream token -> first frame handed to the layer
    ttft_ms: int | None  # what the person saw: reply started -> first frame
    total_ms: int  # reply started -> done


def record_attempts(
    message: Message, attempts: list[Attempt], timings: ReplyTimings
) -> list[ProviderCall]:
    """Store the attempts of a finished reply in one insert (sync ORM); return the rows.

    The reply's thread and organisation are read from `message` (loaded when the reply is
    started, so this costs no query). Errors are logged and swallowed: a reply never fails
    because telemetry did.
    """
    if not attempts:
        return []
    try:
        from threads import rows

        org_id = message.thread.org_id
        calls = [_call_for(message, org_id, attempts, i, timings) for i in range(len(attempts))]
        rows.insert(calls)  # SQL built once (threads/rows.py): every reply ends here
    except Exception:
        log.exception("could not record the attempts of reply %s", message.pk)
        return []
    return calls


def count_calls(calls: list[ProviderCall], message: Message) -> None:
    """Count saved rows for /metrics (in memory: fine on the event loop)."""
    if not calls:
        return
    from . import metrics

    try:
        metrics.observe_calls(calls, message.thread.org.slug)
    except Exception:
        log.exception("could not count the attempts of reply %s", message.pk)


def price(provider: str, model: str, usage: object) -> tuple[Decimal | None, bool]:
    """(cost, priced) of `usage` at the model's price now; an unknown model is unpriced."""
    try:
        info = catalog.get_model(provider, model)
    except catalog.UnknownModelError:
        return None, False
    cost = info.cost(usage)  # type: ignore[arg-type]
    return cost, cost is not None


def _call_for(
    message: Message, org_id: int, attempts: list[Attempt], index: int, timings: ReplyTimings
) -> ProviderCall:
    from .models import ProviderCall

    attempt = attempts[index]
    usage = attempt.usage
    final = index == len(attempts) - 1
    is_retry = any(
        a.provider == attempt.provider and a.model == attempt.model for a in attempts[:index]
    )
    cost: Decimal | None = None
    priced = True
    if usage is not None:
        cost, priced = price(attempt.provider, attempt.model, usage)
    return ProviderCall(
        org_id=org_id,
        thread_id=message.thread_id,
        message_id=message.pk,
        provider=attempt.provider,
        model=attempt.model,
        number=attempt.number,
        outcome=attempt.outcome,
        http_status=attempt.http_status,
        error_class=attempt.error_class[:64],
        error_message=attempt.error_message[:500],
        is_retry=is_retry,
        is_fallback=attempt.is_fallback,
        started=attempt.started,
        queued_ms=attempt.queued_ms,
        ttft_ms=attempt.ttft_ms,
        latency_ms=attempt.latency_ms,
        final=final,
        overhead_ms=timings.overhead_ms if final else None,
        reply_ttft_ms=timings.ttft_ms if final else None,
        reply_total_ms=timings.total_ms if final else None,
        prompt_tokens=usage.prompt_tokens if usage else 0,
        completion_tokens=usage.completion_tokens if usage else 0,
        reasoning_tokens=usage.reasoning_tokens if usage else 0,
        tokens_estimated=usage.estimated if usage else False,
        cost_usd=cost,
        priced=priced,
        vendor_cost_usd=usage.vendor_cost_usd if usage else None,
    )
