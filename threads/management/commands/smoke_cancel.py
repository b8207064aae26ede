"""`manage.py smoke_cancel`: cancel replies mid-stream; time cancel request -> `done`."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import httpx
from django.core.management.base import CommandParser

from threads import smoke


class Command(smoke.SmokeCommand):
    help = (
        "Start replies, cancel each after a random moment, time the cancel request to `done` "
        "(status cancelled) and check the saved message (target < 300 ms)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        self.add_common_arguments(parser)
        parser.add_argument("-n", "--requests", type=int, default=20, help="Replies to cancel.")
        parser.add_argument(
            "--max-delay-ms", type=float, default=800.0, help="Cancel 0..this after start."
        )
        parser.add_argument("--target-cancel-ms", type=float, default=300.0, help="P95.")
        parser.add_argument("--seed", type=int, default=None)

    async def measure(self, target: smoke.Target, options: dict[str, Any]) -> smoke.Report:
        n = options["requests"]
        rng = random.Random(options["seed"])
        progress = smoke.Progress(self, "smoke_cancel", n, options["verbosity"])
        async with smoke.client(timeout=options["timeout"]) as http:
            thread_id = await smoke.create_thread(http, target)

            async def one(_i: int) -> smoke.StreamResult:
                return await self._cancel_one(http, target, thread_id, rng, options)

            results = await smoke.run_concurrently(n, 1, one, progress)
        cancel_ms = [r.latency_ms for r in results if r.ok and r.latency_ms is not None]
        report = smoke.Report(
            f"smoke_cancel {target.provider}:{target.model} n={n} at {target.url}"
        )
        report.metrics["cancel_to_done_ms"] = smoke.summarize(cancel_ms)
        report.info["error_rate_pct"] = round(smoke.error_rate(results), 2)
        report.info["finished_before_cancel"] = sum(r.status == "complete" for r in results)
        if errors := smoke.first_errors(results):
            report.info["errors"] = errors
            if target.log:
                report.info["server_log"] = target.log
        report.checks += [
            smoke.Check(
                "cancel -> done P95",
                report.metrics["cancel_to_done_ms"]["p95"],
                options["target_cancel_ms"],
            ),
            smoke.Check("errors", report.info["error_rate_pct"], 0.0, "%"),
        ]
        return report

    async def _cancel_one(
        self,
        http: httpx.AsyncClient,
        target: smoke.Target,
        thread_id: str,
        rng: random.Random,
        options: dict[str, Any],
    ) -> smoke.StreamResult:
        """Stream a reply; `latency_ms` is cancel request sent -> `done` received."""
        delay = rng.uniform(0, options["max_delay_ms"]) / 1000
        sent_at: list[float] = []
        cancel_task: list[asyncio.Task[httpx.Response]] = []

        async def cancel_later(message_id: str) -> httpx.Response:
            await asyncio.sleep(delay)
            sent_at.append(time.perf_counter())
            return await http.post(
                f"{target.url}/api/messages/{message_id}/cancel", headers=target.headers
            )

        def on_event(name: str, data: dict[str, Any], result: smoke.StreamResult) -> None:
            if name == "start":
                cancel_task.append(asyncio.create_task(cancel_later(data["message_id"])))
            elif name == "done" and sent_at:
                result.latency_ms = (time.perf_counter() - sent_at[0]) * 1000

        result = await smoke.stream_reply(http, target, thread_id, on_event)
        if cancel_task:
            if not sent_at:
                cancel_task[0].cancel()
            else:
                response = await cancel_task[0]
                if response.status_code != 200:
                    result.error = f"cancel: HTTP {response.status_code}"
        if result.status == "complete" and not sent_at:
            # The reply ended before the cancel was due: nothing to time, not an error.
            result.ok, result.error, result.latency_ms = True, "", None
            return result
        if result.status != "cancelled":
            result.ok = False
            result.error = result.error or f"done with status {result.status!r}"
            return result
        result.ok, result.error = True, ""
        # The database must say so too, and keep the text that was streamed.
        saved = await http.get(
            f"{target.url}/api/threads/{thread_id}/messages?limit=100", headers=target.headers
        )
        row = next((m for m in saved.json()["items"] if m["id"] == result.message_id), None)
        if row is None or row["status"] != "cancelled":
            result.ok = False
            result.error = f"saved status {row and row['status']!r}, not 'cancelled'"
        return result
