"""The smoke and benchmark commands, in short versions, against a real daphne process.

No timing assertions: targets are either out of reach on purpose (to see FAIL) or generous.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from threads import smoke

GENEROUS = "600000"


@pytest.fixture(scope="module")
def fake():
    with smoke.FakeProvider() as server:
        server.script()
        yield server


@pytest.fixture(scope="module")
def app(fake):
    env = fake.app_env() | {"DEMO_TTFT_MS": "20", "DEMO_TOKENS_PER_S": "500"}
    with smoke.AppServer(env) as server:
        yield server


@pytest.fixture
def healthy_fake(fake):
    yield fake
    fake.script()


def run(name, app, *args):
    out = StringIO()
    call_command(name, "--url", app.url, "--api-key", app.api_key, *args, stdout=out)
    return out.getvalue()


def test_smoke_ttft_prints_a_table_on_the_demo_provider(app):
    out = run("smoke_ttft", app, "-n", "2", "--target-ttft-ms", GENEROUS)
    assert "smoke_ttft demo:demo-chat n=2" in out
    assert "P50" in out and "P95" in out and "P99" in out
    assert "PASS  TTFT P95" in out


def test_smoke_ttft_reports_json_on_the_fake_provider(app):
    out = run(
        "smoke_ttft",
        app,
        *("-n", "2", "--provider", "openai", "--model", "gpt-4o-mini", "--json"),
        *("--target-ttft-ms", GENEROUS),
    )
    report = json.loads(out)
    assert report["passed"] is True
    assert report["metrics"]["ttft_ms"]["n"] == 2
    assert {c["name"] for c in report["checks"]} == {"TTFT P95", "errors"}


def test_smoke_load_streams_concurrently(app):
    out = run(
        "smoke_load",
        app,
        *("-n", "4", "-c", "2", "--provider", "openai", "--model", "gpt-4o-mini", "--json"),
        *("--target-latency-p50-ms", GENEROUS, "--target-latency-p95-ms", GENEROUS),
        *("--target-ttft-ms", GENEROUS),
    )
    report = json.loads(out)
    assert report["passed"] is True
    assert report["metrics"]["latency_ms"]["n"] == 4
    assert report["info"]["error_rate_pct"] == 0


def test_smoke_cancel_cancels_and_checks_the_saved_reply(app):
    out = run(
        "smoke_cancel",
        app,
        *("-n", "2", "--provider", "openai", "--model", "gpt-4o-mini", "--json"),
        *("--max-delay-ms", "100", "--target-cancel-ms", GENEROUS, "--seed", "1"),
    )
    report = json.loads(out)
    assert report["passed"] is True
    assert report["metrics"]["cancel_to_done_ms"]["n"] == 2


def test_it_fails_on_an_impossible_target(app):
    out = StringIO()
    with pytest.raises(CommandError, match="FAIL"):
        call_command(
            "smoke_ttft",
            *("--url", app.url, "--api-key", app.api_key, "-n", "1", "--target-ttft-ms", "0"),
            stdout=out,
        )
    assert "FAIL  TTFT P95" in out.getvalue()


def test_it_fails_when_the_provider_fails(app, healthy_fake):
    healthy_fake.script({"status": 400})
    out = StringIO()
    with pytest.raises(CommandError, match="FAIL"):
        call_command(
            "smoke_ttft",
            *("--url", app.url, "--api-key", app.api_key, "-n", "1", "--json"),
            *("--provider", "openai", "--model", "gpt-4o-mini"),
            stdout=out,
        )
    report = json.loads(out.getvalue())
    assert report["passed"] is False
    assert report["info"]["error_rate_pct"] == 100


def test_it_exits_non_zero_on_fail(app):
    result = subprocess.run(
        [sys.executable, "manage.py", "smoke_ttft", "--url", app.url, "--api-key", app.api_key]
        + ["-n", "1", "--target-ttft-ms", "0"],
        cwd=smoke.BASE_DIR,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "FAIL" in result.stdout


def test_smoke_coldstart_starts_a_fresh_server():
    out = StringIO()
    call_command("smoke_coldstart", "--json", "--target-ms", GENEROUS, stdout=out)
    report = json.loads(out.getvalue())
    assert report["passed"] is True
    assert report["metrics"]["process_to_first_token_ms"]["n"] == 1


def _bench_overhead(*args: str) -> dict:
    """bench_overhead's JSON report, one level of one stream, two rounds."""
    out = StringIO()
    call_command(
        "bench_overhead",
        *("--levels", "1", "--rounds", "2", "--json"),
        *("--target-cpu-per-chunk-ms", GENEROUS, *args),
        stdout=out,
    )
    return json.loads(out.getvalue())


def test_bench_overhead_measures_every_path():
    """Two rounds: the second reply on each page comes over the socket the first one used."""
    report = _bench_overhead("--target-ttft-25-ms", GENEROUS)
    info = report["info"]["embedded c=1"]
    assert info["errors"] == {"direct": 0, "relay": 0, "sse": 0, "websocket": 0}
    assert info["upstream_chunks_per_reply"] > 50
    assert set(info["added_ms"]) >= {"relay ttft p95", "sse ttft p95", "websocket latency p95"}
    assert info["relay_cpu_ms_per_chunk"] > 0
    ratio = info["cpu_ms_per_reply"] / info["relay_cpu_ms_per_reply"]
    assert info["cpu_vs_relay"] == pytest.approx(ratio, abs=0.01)
    assert report["passed"] is True


async def test_steady_arrival_spreads_the_first_starts_and_then_keeps_every_slot_busy():
    from threads import smoke

    loop = asyncio.get_running_loop()
    starts: list[float] = []
    all_busy = asyncio.Event()

    async def job(i: int) -> smoke.StreamResult:
        starts.append(loop.time())
        if len(starts) == 4:
            all_busy.set()
        await all_busy.wait()  # each worker holds its first job until all four have one
        return smoke.StreamResult(ok=True)

    t0 = loop.time()
    results = await smoke.run_concurrently(8, 4, job, spread_s=0.2)
    assert len(results) == 8
    # Worker k waits k * 0.2 / 4 s before its first job (a sleep never ends early).
    assert starts[3] - t0 >= 0.15
    assert starts[3] - starts[0] >= 0.1


def test_a_figure_just_over_its_target_does_not_print_as_the_target():
    report = smoke.Report("t")
    report.checks.append(smoke.Check("CPU per chunk", 0.2437, 0.2))
    assert "FAIL  CPU per chunk: 0.24 ms (target <= 0.2)" in report.table()
    assert smoke._fmt(12.34) == "12.3" and smoke._fmt(0.0) == "0.0"


async def test_database_writes_are_read_once_they_stop_arriving(monkeypatch):
    from threads.management.commands import bench_overhead

    readings = iter([10, 12, 15, 15, 99])
    calls = []

    async def writes(url):
        calls.append(url)
        return next(readings)

    monkeypatch.setattr(bench_overhead, "_pg_writes", writes)
    monkeypatch.setattr(bench_overhead, "PG_SETTLE_S", 0)
    assert await bench_overhead._pg_writes_settled("postgres://db") == 15
    assert len(calls) == 4  # stopped at the first repeat
    assert await bench_overhead._pg_writes_settled(None) is None


async def test_database_writes_that_never_settle_are_read_at_the_deadline(monkeypatch):
    from threads.management.commands import bench_overhead

    count = iter(range(1_000_000))

    async def writes(url):
        return next(count)

    monkeypatch.setattr(bench_overhead, "_pg_writes", writes)
    monkeypatch.setattr(bench_overhead, "PG_SETTLE_S", 0)
    monkeypatch.setattr(bench_overhead, "PG_SETTLE_MAX_S", 0.05)
    assert await bench_overhead._pg_writes_settled("postgres://db") > 1


@pytest.mark.services
@pytest.mark.skipif(
    not (os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL")),
    reason="needs DATABASE_URL and REDIS_URL (the second test run sets them)",
)
def test_bench_overhead_on_postgresql_and_redis_counts_the_rows_each_reply_writes():
    redis_url = os.environ["REDIS_URL"].rsplit("/", 1)[0] + "/7"
    report = _bench_overhead(
        *("--backend", "services", "--no-relay", "--no-websocket"),
        *("--database-url", os.environ["DATABASE_URL"], "--redis-url", redis_url),
    )
    info = report["info"]["services c=1"]
    assert info["errors"] == {"direct": 0, "sse": 0}
    # Two messages, the thread, the final save and one provider call; a partial save or two.
    assert 5 <= info["db_rows_written_per_reply"] <= 7
    assert report["passed"] is True
