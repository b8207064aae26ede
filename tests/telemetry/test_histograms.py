from __future__ import annotations

import random

import pytest

from telemetry import histograms


def _exact(values: list[int], q: float) -> int:
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, int(-(-q / 100 * len(ordered) // 1)) - 1))
    return ordered[index]


@pytest.mark.parametrize("q", [50, 95, 99])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_percentiles_are_within_one_bucket_of_the_exact_value(q, seed):
    rng = random.Random(seed)
    values = [round(rng.lognormvariate(6.5, 0.8)) for _ in range(5000)]
    # Built in pieces and merged, as rollups are.
    parts = [histograms.empty() for _ in range(7)]
    for i, value in enumerate(values):
        histograms.add(parts[i % 7], value)
    hist = histograms.merged(histograms.compact(p) for p in parts)
    estimate = histograms.percentile(hist, q)
    exact = _exact(values, q)
    assert abs(histograms.bucket_of(estimate) - histograms.bucket_of(exact)) <= 1


def test_buckets_are_log_spaced_and_fixed():
    bounds = histograms.BOUNDS
    assert bounds == tuple(sorted(set(bounds)))
    assert bounds[0] == 5 and bounds[-1] > 500_000
    assert all(b / a <= histograms.RATIO + 0.25 for a, b in zip(bounds, bounds[1:], strict=False))
    assert histograms.bucket_of(1) == 0
    assert histograms.bucket_of(10**9) == histograms.SIZE - 1


def test_an_empty_histogram_has_no_percentile():
    assert histograms.percentile(histograms.empty(), 95) is None
    assert histograms.percentile([], 50) is None


def test_merging_short_and_missing_lists():
    a = histograms.empty()
    histograms.add(a, 100)
    merged = histograms.merged([histograms.compact(a), None, []])
    assert histograms.count(merged) == 1
