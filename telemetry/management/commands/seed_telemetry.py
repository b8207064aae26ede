from __future__ import annotations

import random
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import connection, transaction
from django.utils import timezone

from providers import catalog
from providers.base import Usage
from telemetry import rollups
from telemetry.models import Probe, ProviderCall
from threads.models import Organization

MODELS = [
    ("openai", "gpt-4o-mini"),
    ("openai", "gpt-4.1"),
    ("anthropic", "claude-sonnet-4-5"),
    ("anthropic", "claude-haiku-4-5"),
    ("gemini", "gemini-2.5-flash"),
    ("gemini", "gemini-2.5-pro"),
    ("openai", "gpt-3.5-turbo"),  # unpriced in the catalog
    ("demo", "demo-chat"),
]
FAILURES = [
    ("rate_limited", 429, "rate_limited"),
    ("error", 500, "retryable"),
    ("timeout", None, "deadline"),
    ("error", 401, "auth"),
]
COLUMNS = (
    "org_id",
    "provider",
    "model",
    "number",
    "outcome",
    "http_status",
    "error_class",
    "error_message",
    "is_retry",
    "is_fallback",
    "started",
    "queued_ms",
    "ttft_ms",
    "latency_ms",
    "final",
    "overhead_ms",
    "reply_ttft_ms",
    "reply_total_ms",
    "prompt_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "tokens_estimated",
    "cost_usd",
    "priced",
    "vendor_cost_usd",
    "folded",
    "created",
)
Q8 = Decimal("0.00000001")


class Command(BaseCommand):
    help = (
        "Seed synthetic attempt rows (a million by default, in time order) plus a readiness "
        "probe a minute, then fold them: the data for bench_dashboard."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--rows", type=int, default=1_000_000)
        parser.add_argument("--days", type=int, default=30)
        parser.add_argument("--orgs", type=int, default=10)
        parser.add_argument("--seed", type=int, default=1)

    def handle(self, *args: Any, **options: Any) -> str:
        rng = random.Random(options["seed"])
        orgs = [
            Organization.objects.get_or_create(
                slug=f"bench-{i:02d}", defaults={"name": f"Bench {i:02d}"}
            )[0].pk
            for i in range(1, options["orgs"] + 1)
        ]
        # Prices first: the rows are generated while COPY holds the connection.
        prices: dict[tuple[str, str], catalog.ModelInfo | None] = {}
        for key in MODELS:
            try:
                prices[key] = catalog.get_model(*key)
            except catalog.UnknownModelError:
                prices[key] = None
        now = timezone.now()
        started = time.perf_counter()
        made = self._insert(self._rows(rng, orgs, prices, options["rows"], options["days"], now))
        inserted_s = time.perf_counter() - started
        Probe.objects.bulk_create(
            (
                Probe(checked=now - timedelta(minutes=m), ok=rng.random() > 0.002)
                for m in range(options["days"] * 1440)
            ),
            batch_size=5000,
        )
        started = time.perf_counter()
        folded = rollups.fold_pending(batch=20_000)
        fold_s = time.perf_counter() - started
        return (
            f"Seeded {made:,} attempts over {options['days']} days for {len(orgs)} "
            f"organisations in {inserted_s:.1f} s; folded {folded:,} in {fold_s:.1f} s."
        )

    def _insert(self, rows: Iterator[tuple[Any, ...]]) -> int:
        table = ProviderCall._meta.db_table
        columns = ", ".join(COLUMNS)
        made = 0
        with transaction.atomic(), connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                # COPY: a million rows in seconds rather than minutes of INSERTs.
                with cursor.cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                        made += 1
                return made
            sql = f"INSERT INTO {table} ({columns}) VALUES ({', '.join(['%s'] * len(COLUMNS))})"
            batch: list[tuple[Any, ...]] = []
            for row in rows:
                batch.append(self._adapt(row))
                if len(batch) == 10_000:
                    cursor.executemany(sql, batch)
                    made += len(batch)
                    batch = []
            cursor.executemany(sql, batch)
            return made + len(batch)

    def _adapt(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        ops = connection.ops
        return tuple(
            ops.adapt_datetimefield_value(v)
            if isinstance(v, datetime)
            else str(v)
            if isinstance(v, Decimal)
            else v
            for v in row
        )

    def _rows(
        self,
        rng: random.Random,
        orgs: list[int],
        prices: dict[tuple[str, str], catalog.ModelInfo | None],
        count: int,
        days: int,
        now: datetime,
    ) -> Iterator[tuple[Any, ...]]:
        first = now - timedelta(days=days)
        step = days * 86400 / count
        made = 0
        while made < count:
            org = rng.choice(orgs)
            key = MODELS[min(len(MODELS) - 1, int(rng.expovariate(0.45)))]
            when = first + timedelta(seconds=(made + rng.random()) * step)
            number, fallback = 1, False
            # About 4 % of replies fail first; a third of those fall back to another model.
            if rng.random() < 0.04 and made + 1 < count:
                outcome, status, cls = rng.choice(FAILURES)
                yield self._row(rng, org, key, when, 1, outcome, status, cls, prices, now)
                made += 1
                number = 2
                if rng.random() < 0.33:
                    fallback, key = True, rng.choice([m for m in MODELS if m != key])
            outcome = "cancelled" if rng.random() < 0.003 else "ok"
            yield self._row(
                rng,
                org,
                key,
                when,
                number,
                outcome,
                None,
                "",
                prices,
                now,
                final=True,
                fallback=fallback,
            )
            made += 1

    def _row(
        self,
        rng: random.Random,
        org: int,
        key: tuple[str, str],
        when: datetime,
        number: int,
        outcome: str,
        status: int | None,
        cls: str,
        prices: dict[tuple[str, str], catalog.ModelInfo | None],
        now: datetime,
        final: bool = False,
        fallback: bool = False,
    ) -> tuple[Any, ...]:
        answered = outcome in ("ok", "cancelled")
        ttft = round(rng.lognormvariate(6.3, 0.55)) if answered else None
        prompt = rng.randint(50, 4000)
        completion = rng.randint(20, 900) if answered else 0
        latency = (
            (ttft or 0) + round(completion * rng.uniform(2, 6))
            if answered
            else rng.randint(30, 3000)
        )
        queued = rng.choice([0, 0, 0, rng.randint(1, 2000)])
        info = prices[key]
        cost = info.cost(Usage(prompt, completion)) if info is not None else None
        cost = cost.quantize(Q8) if cost is not None else None
        vendor = None
        if key[0] == "openai" and cost is not None and rng.random() < 0.5:
            vendor = (cost * Decimal(rng.choice(["1", "1", "1.1"]))).quantize(Q8)
        extra = rng.randint(5, 60)
        return (
            org,
            key[0],
            key[1],
            number,
            outcome,
            status,
            cls,
            "",
            number > 1 and not fallback,
            fallback,
            when,
            queued,
            ttft,
            latency,
            final,
            rng.randint(1, 40) if final else None,
            (ttft or 0) + queued + extra if final else None,
            latency + queued + extra if final else None,
            prompt,
            completion,
            0,
            False,
            cost,
            info is not None and info.priced,
            vendor,
            False,
            now,
        )
