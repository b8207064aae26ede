"""`manage.py smoke_ttft`: time to first token through the SSE endpoint."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser

from threads import smoke


class Command(smoke.SmokeCommand):
    help = "Time to first token through POST /api/threads/{id}/messages/stream (P95 <= 1.5 s)."

    def add_arguments(self, parser: CommandParser) -> None:
        self.add_common_arguments(parser)
        parser.add_argument("-n", "--requests", type=int, default=20, help="Replies to time.")
        parser.add_argument("--target-ttft-ms", type=float, default=1500.0, help="TTFT P95.")

    async def measure(self, target: smoke.Target, options: dict[str, Any]) -> smoke.Report:
        n = options["requests"]
        progress = smoke.Progress(self, "smoke_ttft", n, options["verbosity"])
        async with smoke.client(timeout=options["timeout"]) as http:
            thread_id = await smoke.create_thread(http, target)
            # One after another, as a person would: TTFT without load.
            results = await smoke.run_concurrently(
                n, 1, lambda i: smoke.stream_reply(http, target, thread_id), progress
            )
        ttft = [r.ttft_ms for r in results if r.ttft_ms is not None]
        report = smoke.Report(f"smoke_ttft {target.provider}:{target.model} n={n} at {target.url}")
        report.metrics["ttft_ms"] = smoke.summarize(ttft)
        report.metrics["latency_ms"] = smoke.summarize(
            [r.latency_ms for r in results if r.latency_ms is not None]
        )
        report.info["error_rate_pct"] = round(smoke.error_rate(results), 2)
        if errors := smoke.first_errors(results):
            report.info["errors"] = errors
            if target.log:
                report.info["server_log"] = target.log
        report.checks.append(
            smoke.Check("TTFT P95", report.metrics["ttft_ms"]["p95"], options["target_ttft_ms"])
        )
        report.checks.append(smoke.Check("errors", report.info["error_rate_pct"], 0.0, "%"))
        return report
