"""`manage.py smoke_load`: `ab -n 250 -c 25`, as streaming replies through the SSE endpoint."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from django.core.management.base import CommandParser

from threads import smoke


class Command(smoke.SmokeCommand):
    help = (
        "Stream -n replies, -c at a time, through the SSE endpoint: latency P50 <= 3.5 s, "
        "P95 <= 6 s, TTFT P95 <= 1.5 s, errors < 1 %."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        self.add_common_arguments(parser)
        parser.add_argument("-n", "--requests", type=int, default=250, help="Replies in all.")
        parser.add_argument("-c", "--concurrency", type=int, default=25, help="At a time.")
        parser.add_argument("--target-latency-p50-ms", type=float, default=3500.0)
        parser.add_argument("--target-latency-p95-ms", type=float, default=6000.0)
        parser.add_argument("--target-ttft-ms", type=float, default=1500.0, help="TTFT P95.")
        parser.add_argument("--target-error-pct", type=float, default=0.99)

    async def measure(self, target: smoke.Target, options: dict[str, Any]) -> smoke.Report:
        n, c = options["requests"], options["concurrency"]
        async with smoke.client(limit=c + 5, timeout=options["timeout"]) as http:
            # One thread per concurrent stream, made before the clock starts.
            threads = await asyncio.gather(*(smoke.create_thread(http, target) for _ in range(c)))
            progress = smoke.Progress(self, "smoke_load", n, options["verbosity"])
            started = time.perf_counter()
            results = await smoke.run_concurrently(
                n, c, lambda i: smoke.stream_reply(http, target, threads[i % c]), progress
            )
            elapsed = time.perf_counter() - started
        report = smoke.Report(
            f"smoke_load {target.provider}:{target.model} n={n} c={c} at {target.url}"
        )
        report.metrics["ttft_ms"] = smoke.summarize(
            [r.ttft_ms for r in results if r.ttft_ms is not None]
        )
        report.metrics["latency_ms"] = smoke.summarize(
            [r.latency_ms for r in results if r.latency_ms is not None]
        )
        report.info["error_rate_pct"] = round(smoke.error_rate(results), 2)
        report.info["replies_per_s"] = round(n / elapsed, 1)
        if errors := smoke.first_errors(results):
            report.info["errors"] = errors
            if target.log:
                report.info["server_log"] = target.log
        latency, ttft = report.metrics["latency_ms"], report.metrics["ttft_ms"]
        report.checks += [
            smoke.Check("latency P50", latency["p50"], options["target_latency_p50_ms"]),
            smoke.Check("latency P95", latency["p95"], options["target_latency_p95_ms"]),
            smoke.Check("TTFT P95", ttft["p95"], options["target_ttft_ms"]),
            smoke.Check("errors", report.info["error_rate_pct"], options["target_error_pct"], "%"),
        ]
        return report
