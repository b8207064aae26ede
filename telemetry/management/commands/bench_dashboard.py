from __future__ import annotations

import statistics
import time
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection, reset_queries
from django.test import Client
from django.urls import reverse

from telemetry.models import ProviderCall


class Command(BaseCommand):
    help = "Time the admin dashboard's render, per range, as a superuser sees it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--runs", type=int, default=5)
        parser.add_argument("--ranges", default="24h,7d,30d")
        parser.add_argument(
            "--user", default="bench-admin", help="A superuser (created if missing)."
        )

    def handle(self, *args: Any, **options: Any) -> str:
        User = get_user_model()
        user = User.objects.filter(username=options["user"]).first()
        if user is None:
            user = User.objects.create_superuser(options["user"], password=None)
        if not user.is_superuser:
            raise CommandError(f"{options['user']} is not a superuser")
        client = Client(HTTP_HOST="127.0.0.1")
        client.force_login(user)
        url = reverse("admin:telemetry_dashboard_changelist")
        rows = ProviderCall.objects.count()
        worst = 0.0
        for key in options["ranges"].split(","):
            client.get(url, {"range": key})  # warm: templates, catalog, connection
            times = []
            for _ in range(options["runs"]):
                reset_queries()
                started = time.perf_counter()
                response = client.get(url, {"range": key})
                times.append((time.perf_counter() - started) * 1000)
                if response.status_code != 200:
                    raise CommandError(f"{url}?range={key} answered {response.status_code}")
            worst = max(worst, max(times))
            self.stdout.write(
                f"range={key}: median {statistics.median(times):.0f} ms, max {max(times):.0f} ms "
                f"over {options['runs']} runs"
            )
        return f"{rows:,} attempt rows on {connection.vendor}; slowest render {worst:.0f} ms"
