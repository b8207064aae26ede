"""Mergeable latency histograms with fixed, log-spaced buckets.

Every histogram has the same bounds, so merging two is adding their counts element by
element: a range's percentiles come from summed buckets, never from raw rows. Bucket i holds
values in (BOUNDS[i-1], BOUNDS[i]] milliseconds; the last bucket holds everything above the
last bound. With a ratio of 1.2 between bounds, a percentile is off by at most 20 %.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from operator import add as add_

RATIO = 1.2
FIRST_MS = 5.0
# 5 ms .. about 10 minutes: 65 bounds, plus one overflow bucket.
BOUNDS: tuple[int, ...] = tuple(
    sorted({round(FIRST_MS * RATIO**i) for i in range(65) if FIRST_MS * RATIO**i <= 700_000})
)
SIZE = len(BOUNDS) + 1


def bucket_of(ms: int | float) -> int:
    """The index of the bucket that holds `ms`."""
    return bisect.bisect_left(BOUNDS, ms)


def empty() -> list[int]:
    return [0] * SIZE


def add(hist: list[int], ms: int | float | None) -> None:
    if ms is not None:
        hist[bucket_of(ms)] += 1


def merge(into: list[int], other: Sequence[int] | None) -> list[int]:
    """Add `other` to `into` in place (a shorter or missing list counts as zeros)."""
    if other:
        into[: len(other)] = map(add_, into, other)
    return into


def merged(hists: Iterable[Sequence[int] | None]) -> list[int]:
    out = empty()
    for hist in hists:
        merge(out, hist)
    return out


def compact(hist: list[int]) -> list[int]:
    """Drop trailing zeros before storing: most latencies sit in the first half."""
    end = len(hist)
    while end and not hist[end - 1]:
        end -= 1
    return hist[:end]


def count(hist: Sequence[int]) -> int:
    return sum(hist)


def percentile(hist: Sequence[int], q: float) -> int | None:
    """The q-th percentile (0 < q <= 100) in ms, interpolated within its bucket; None if empty.

    The exact value lies in the same bucket, so the answer is within one bucket of it.
    """
    total = sum(hist)
    if not total:
        return None
    rank = q / 100 * total
    seen = 0
    for i, n in enumerate(hist):
        if not n:
            continue
        if seen + n >= rank:
            low = BOUNDS[i - 1] if i > 0 else 0
            high = BOUNDS[i] if i < len(BOUNDS) else BOUNDS[-1] * RATIO
            return round(low + (high - low) * max(0.0, rank - seen) / n)
        seen += n
    return BOUNDS[-1]  # pragma: no cover - rank never exceeds total
