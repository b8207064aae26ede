"""How long to wait before retrying a model, and when a model is cooled down.

Both take their clock from the caller, so tests drive time by hand.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from django.conf import settings


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff: first, first*factor, ... capped, each shortened by up to `jitter`.

    Jitter only shortens a delay, so the cap is a true upper bound and retries from many
    clients spread out instead of arriving together.
    """

    first_s: float = 1.0
    factor: float = 2.0
    cap_s: float = 8.0
    jitter: float = 0.25  # fraction of the delay that may be taken off at random

    @classmethod
    def from_settings(cls) -> Backoff:
        return cls(
            first_s=settings.LLM_BACKOFF_FIRST_S,
            factor=settings.LLM_BACKOFF_FACTOR,
            cap_s=settings.LLM_BACKOFF_CAP_S,
            jitter=settings.LLM_BACKOFF_JITTER,
        )

    def ceiling(self, retry: int) -> float:
        """The delay before retry number `retry` (1-based), before jitter."""
        return min(self.cap_s, self.first_s * self.factor ** (retry - 1))

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        base = self.ceiling(retry)
        r = (rng or random).random()
        return base * (1 - self.jitter * r)


@dataclass(slots=True)
class _Record:
    events: deque[tuple[float, bool]] = field(default_factory=deque)  # (when, ok)
    until: float = 0.0


class Cooldown:
    """Skip a model that keeps failing, for a few seconds.

    A model cools down after `failures` failures within `window_s`, or when at least half of
    `min_requests` or more recent requests failed. Per process: each server learns on its own,
    which is enough to keep fallbacks from queueing behind a dead model.
    """

    def __init__(
        self,
        *,
        failures: int = 3,
        min_requests: int = 5,
        window_s: float = 60.0,
        cool_s: float = 10.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        import time

        self.failures = failures
        self.min_requests = min_requests
        self.window_s = window_s
        self.cool_s = cool_s
        self.clock = clock or time.monotonic
        self._records: dict[str, _Record] = {}

    @classmethod
    def from_settings(cls, clock: Callable[[], float] | None = None) -> Cooldown:
        return cls(
            failures=settings.LLM_COOLDOWN_FAILURES,
            min_requests=settings.LLM_COOLDOWN_MIN_REQUESTS,
            window_s=settings.LLM_COOLDOWN_WINDOW_S,
            cool_s=settings.LLM_COOLDOWN_S,
            clock=clock,
        )

    def _trim(self, record: _Record, now: float) -> None:
        while record.events and record.events[0][0] <= now - self.window_s:
            record.events.popleft()

    def record(self, key: str, ok: bool) -> None:
        now = self.clock()
        record = self._records.setdefault(key, _Record())
        record.events.append((now, ok))
        self._trim(record, now)
        if ok:
            return
        failed = sum(1 for _, good in record.events if not good)
        total = len(record.events)
        if failed >= self.failures or (total >= self.min_requests and failed * 2 >= total):
            record.until = now + self.cool_s
            record.events.clear()  # start afresh once it is back

    def remaining(self, key: str) -> float:
        """Seconds left of the key's cooldown; 0 when it may be used."""
        record = self._records.get(key)
        if record is None:
            return 0.0
        return max(0.0, record.until - self.clock())
