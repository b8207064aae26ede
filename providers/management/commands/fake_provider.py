"""`manage.py fake_provider`: serve the fake vendor APIs for smoke runs and manual testing."""

from __future__ import annotations

import asyncio
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from providers.fake import PROVIDER_VENDORS, FakeProviderServer, base_url, env_lines


class Command(BaseCommand):
    help = (
        "Serve fake OpenAI, Perplexity, Gemini, OpenRouter, Anthropic and OpenAI-compatible "
        "streaming APIs on one port until Ctrl-C (control grammar: providers/fake/__init__.py)."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--port", type=int, default=8765)
        parser.add_argument("--host", default="127.0.0.1")

    def handle(self, *args: Any, **options: Any) -> str:
        self.verbosity = int(options.get("verbosity", 1))
        server = FakeProviderServer()
        try:
            return asyncio.run(self._serve(server, options["host"], options["port"]))
        except KeyboardInterrupt:
            return f"Fake provider stopped after {len(server.requests)} requests."
        except OSError as exc:
            raise CommandError(f"Cannot listen on {options['host']}:{options['port']}: {exc}")

    async def _serve(self, server: FakeProviderServer, host: str, port: int) -> str:
        await server.start(host, port)
        if self.verbosity >= 1:
            self.stdout.write(f"Fake provider listening on {server.url}")
            for pid in PROVIDER_VENDORS:
                self.stdout.write(f"  {pid:<14} {base_url(server.url, pid)}")
            self.stdout.write("\nPoint the app at it with:\n")
            self.stdout.write("\n".join(env_lines(server.url)))
            self.stdout.write("\nControls: x-fake-* headers, model~suffix, POST /_fake/script.")
        try:
            await server.serve_forever()
        finally:
            await server.close()
        return ""
