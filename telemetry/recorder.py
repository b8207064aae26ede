"""Records one row per provider attempt. Telemetry must never break chat."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from providers.policy import Attempt
    from threads.models import Message

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReplyTimings:
    """Per-stage timings of one reply, in milliseconds (None where the stage never happened)."""

    queued_ms: int | None  # waiting in the rate-limit queue, all attempts together
    upstream_ttft_ms: int | None  # the answering attempt: request sent -> first token
    overhead_ms: int | None  # ours: first upstream token -> first frame handed to the layer
    ttft_ms: int | None  # what the person saw: reply started -> first frame
    total_ms: int  # reply started -> done


async def arecord_attempts(
    message: Message, attempts: list[Attempt], timings: ReplyTimings
) -> None:
    """Store the attempts of a finished reply (to be written by the telemetry app)."""
    return None
