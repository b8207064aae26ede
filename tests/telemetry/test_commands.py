from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command

from telemetry.models import ProviderCall, Rollup

pytestmark = [pytest.mark.django_db]


def test_seed_and_bench():
    out = StringIO()
    call_command("seed_telemetry", rows=300, days=2, orgs=2, stdout=out)
    assert "Seeded 300 attempts" in out.getvalue()
    assert ProviderCall.objects.count() == 300
    assert not ProviderCall.objects.pending().exists()
    assert Rollup.objects.filter(granularity="day").exists()
    out = StringIO()
    call_command("bench_dashboard", runs=1, ranges="24h,30d", stdout=out)
    assert "range=30d: median" in out.getvalue()
    assert "300 attempt rows" in out.getvalue()
