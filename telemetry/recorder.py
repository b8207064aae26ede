"""Records one row per provider attempt. Telemetry must never break chat."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from providers.policy import Attempt
    from threads.models import Message

log = logging.getLogger(__name__)


async def arecord_attempts(message: Message, attempts: list[Attempt]) -> None:
    """Store the attempts of a finished reply (the telemetry models are not there yet)."""
    return None
