"""`manage.py smoke_coldstart`: a fresh server process to the first reply's first token."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from django.core.management.base import CommandError, CommandParser

from threads import smoke


class Command(smoke.SmokeCommand):
    help = (
        "Start a fresh daphne process (temp SQLite, already migrated) and time until the "
        "first reply's first token (target < 10 s)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--provider", default="", help="Default: demo (openai with --fake).")
        parser.add_argument("--model", default="", help="Default: demo-chat (gpt-4o-mini).")
        parser.add_argument("--json", action="store_true", help="Print the report as JSON.")
        parser.add_argument("--fake", action="store_true", help="Point the app at the fake.")
        parser.add_argument("--fake-script", default="", help="JSON controls for the fake.")
        parser.add_argument("-n", "--runs", type=int, default=1, help="Cold starts to time.")
        parser.add_argument("--target-ms", type=float, default=10_000.0, help="Worst run.")

    def handle(self, *args: Any, **options: Any) -> str:
        starts: list[float] = []
        ready: list[float] = []
        errors: list[str] = []
        target_name = ""
        for i in range(options["runs"]):
            with contextlib.ExitStack() as stack:
                env: dict[str, str] = {}
                if options["fake"]:
                    fake = stack.enter_context(smoke.FakeProvider())
                    controls = (
                        json.loads(options["fake_script"]) if options["fake_script"] else None
                    )
                    fake.script(controls)
                    env = fake.app_env()
                server = stack.enter_context(smoke.AppServer(env, start=False))
                provider = options["provider"] or ("openai" if options["fake"] else "demo")
                model = options["model"] or ("gpt-4o-mini" if options["fake"] else "demo-chat")
                target = smoke.Target(server.url, server.api_key, provider, model)
                target_name = f"{provider}:{model}"
                t0 = time.perf_counter()
                server.start()
                try:
                    server.wait()
                except CommandError as exc:
                    errors.append(str(exc))
                    continue
                ready.append((time.perf_counter() - t0) * 1000)
                result = asyncio.run(self._first_reply(target))
                if result.first_token_at is None or not result.ok:
                    errors.append(result.error or "no token")
                else:
                    starts.append((result.first_token_at - t0) * 1000)
            if options["verbosity"] >= 2:
                self.stderr.write(f"smoke_coldstart: {i + 1}/{options['runs']}")
        report = smoke.Report(f"smoke_coldstart {target_name} runs={options['runs']}")
        report.metrics["process_to_healthz_ms"] = smoke.summarize(ready)
        report.metrics["process_to_first_token_ms"] = smoke.summarize(starts)
        report.info["error_rate_pct"] = round(100 * len(errors) / options["runs"], 2)
        if errors:
            report.info["errors"] = errors[:3]
        report.checks += [
            smoke.Check(
                "start -> first token (max)",
                report.metrics["process_to_first_token_ms"]["max"],
                options["target_ms"],
            ),
            smoke.Check("errors", report.info["error_rate_pct"], 0.0, "%"),
        ]
        return self.emit(report, options["json"])

    async def _first_reply(self, target: smoke.Target) -> smoke.StreamResult:
        async with smoke.client() as http:
            thread_id = await smoke.create_thread(http, target)
            return await smoke.stream_reply(http, target, thread_id)
