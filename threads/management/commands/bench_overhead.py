"""`manage.py bench_overhead`: what the app adds on top of the provider's own stream.

1. Start the fake provider (OpenAI format, 200 ms to the first token, 50 tokens 20 ms apart)
   and the app under daphne pointed at it (embedded defaults, or PostgreSQL + Redis).
2. At each concurrency level, stream the same replies straight from the fake (the baseline),
   through a bare relay (threads/bench_relay.py: this machine's floor for HTTP in, httpx,
   HTTP out), through the app's SSE endpoint, and through the page's WebSocket (what a
   browser sees: each page keeps its socket open from one message to the next, unless
   `--socket-per-reply`). By default the streams start spread over one reply's length
   (`--arrival steady`, people chatting); `--arrival burst` starts each round's all at once.
3. Report the added TTFT and latency (P50 / P95), the app's and the relay's CPU time per
   upstream chunk, RSS per active stream (from /proc), and on PostgreSQL the rows written
   per reply (pg_stat_user_tables n_tup_ins + n_tup_upd + n_tup_del).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from django.conf import settings
from django.core.management.base import CommandError, CommandParser

from threads import smoke

PG_WRITES = "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) FROM pg_stat_user_tables"
# A backend reports its table stats at most once a second while busy, and a backend gone
# idle with stats still unreported reports them within 10 s (PostgreSQL's
# PGSTAT_IDLE_INTERVAL); the app's low-priority writes (partial saves, telemetry) may also
# still be landing after a level's last reply. So the count is read once it stops moving:
# two equal readings further apart than that (at most PG_SETTLE_MAX_S).
PG_SETTLE_S = 11.0
PG_SETTLE_MAX_S = 60.0


class Command(smoke.SmokeCommand):
    help = (
        "Measure the app's added TTFT/latency over the fake provider at 1, 25 and 50 streams "
        "(SSE and WebSocket), its CPU per upstream chunk, RSS per stream and DB writes per reply."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--levels", default="1,25,50", help="Concurrent streams, comma-separated."
        )
        parser.add_argument(
            "--rounds", type=int, default=2, help="Replies per stream slot at each level."
        )
        parser.add_argument(
            "--backend",
            choices=["embedded", "services", "both"],
            default="embedded",
            help="embedded: SQLite + in-memory layer; services: PostgreSQL + Redis.",
        )
        parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/test")
        parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/7")
        parser.add_argument("--no-websocket", action="store_true", help="Skip the WebSocket path.")
        parser.add_argument(
            "--socket-per-reply",
            action="store_true",
            help="Open a new WebSocket for every reply instead of one per page kept open "
            "(a browser keeps its page's socket from one message to the next).",
        )
        parser.add_argument(
            "--no-relay",
            action="store_true",
            help="Skip the bare relay (threads/bench_relay.py) measured as the machine's floor.",
        )
        parser.add_argument(
            "--arrival",
            choices=["steady", "burst"],
            default="steady",
            help="steady: the streams start spread over one reply's duration, as people "
            "chatting would; burst: all at the same moment each round (the worst case).",
        )
        parser.add_argument(
            "--debug",
            action="store_true",
            help="Run the app with DEBUG on (the checkout's default) instead of production "
            "settings (DEBUG off, as deployed).",
        )
        parser.add_argument("--json", action="store_true", help="Print the report as JSON.")
        parser.add_argument("--target-ttft-25-ms", type=float, default=10.0)
        parser.add_argument("--target-ttft-50-ms", type=float, default=25.0)
        parser.add_argument("--target-latency-50-ms", type=float, default=50.0)
        parser.add_argument("--target-cpu-per-chunk-ms", type=float, default=0.2)
        parser.add_argument("--target-writes-per-reply", type=float, default=6.0)

    def handle(self, *args: Any, **options: Any) -> str:
        levels = [int(x) for x in options["levels"].split(",") if x.strip()]
        backends = (
            ["embedded", "services"] if options["backend"] == "both" else [options["backend"]]
        )
        report = smoke.Report(
            f"bench_overhead levels={levels} rounds={options['rounds']} "
            f"arrival={options['arrival']}"
        )
        for backend in backends:
            with contextlib.ExitStack() as stack:
                env, pg_url = stack.enter_context(self._backend(backend, options))
                fake = stack.enter_context(smoke.FakeProvider())
                fake.script()
                relay = None if options["no_relay"] else stack.enter_context(smoke.Relay(fake.url))
                server = stack.enter_context(smoke.AppServer(env | fake.app_env() | _mode(options)))
                asyncio.run(
                    self._bench(backend, server, fake, relay, pg_url, levels, options, report)
                )
        return self.emit(report, options["json"])

    @contextlib.contextmanager
    def _backend(
        self, backend: str, options: dict[str, Any]
    ) -> Iterator[tuple[dict[str, str], str | None]]:
        if backend == "embedded":
            yield {}, None
            return
        import psycopg

        base = options["database_url"]
        name = f"bench_{uuid.uuid4().hex[:8]}"
        url = base.rsplit("/", 1)[0] + "/" + name
        try:
            admin = psycopg.connect(base.replace("postgres://", "postgresql://"), autocommit=True)
        except psycopg.Error as exc:
            raise CommandError(f"PostgreSQL at {base}: {exc}") from None
        with admin:
            admin.execute(f'CREATE DATABASE "{name}"')
            try:
                yield {"DATABASE_URL": url, "REDIS_URL": options["redis_url"]}, url
            finally:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    async def _bench(
        self,
        backend: str,
        server: smoke.AppServer,
        fake: smoke.FakeProvider,
        relay: smoke.Relay | None,
        pg_url: str | None,
        levels: list[int],
        options: dict[str, Any],
        report: smoke.Report,
    ) -> None:
        target = smoke.Target(server.url, server.api_key, *smoke.FAKE_MODEL)
        verbosity = options["verbosity"]
        password = server.env.get("DEMO_PASSWORD") or "demo-password"
        async with smoke.client(limit=max(levels) * 2 + 10) as http:
            browser = None
            if not options["no_websocket"]:
                browser = await smoke.browser_session(
                    server.url, settings.DEMO_USER, password, behind_tls_proxy=not options["debug"]
                )
            try:
                # Warm up: first requests pay for imports and connections.
                spans = []
                for _ in range(2):
                    spans.append(await smoke.stream_direct(http, fake.url))
                    if relay is not None:
                        await smoke.stream_direct(http, relay.url)
                    await smoke.stream_reply(http, target, await smoke.create_thread(http, target))
                # Steady arrival spreads each level's streams over one direct reply's length.
                spread = 0.0
                if options["arrival"] == "steady":
                    spread = max((r.latency_ms or 0) for r in spans) / 1000
                for c in levels:
                    n = c * options["rounds"]
                    key = f"{backend} c={c}"
                    direct = await smoke.run_concurrently(
                        n,
                        c,
                        lambda i: smoke.stream_direct(http, fake.url),
                        smoke.Progress(self, f"{key} direct", n, verbosity),
                        spread,
                    )
                    relayed: list[smoke.StreamResult] = []
                    relay_cpu = 0.0
                    if relay is not None:

                        async def relayed_reply(i: int, url: str = relay.url) -> smoke.StreamResult:
                            return await smoke.stream_direct(http, url)

                        cpu0 = smoke.cpu_seconds(relay.pid)
                        relayed = await smoke.run_concurrently(
                            n,
                            c,
                            relayed_reply,
                            smoke.Progress(self, f"{key} relay", n, verbosity),
                            spread,
                        )
                        relay_cpu = smoke.cpu_seconds(relay.pid) - cpu0
                    threads = [await smoke.create_thread(http, target) for _ in range(c)]

                    async def sse_reply(
                        i: int, threads: list[str] = threads, c: int = c
                    ) -> smoke.StreamResult:
                        return await smoke.stream_reply(http, target, threads[i % c])

                    writes0 = await _pg_writes_settled(pg_url)
                    cpu0, rss0 = smoke.cpu_seconds(server.pid), smoke.rss_bytes(server.pid)
                    peak = [rss0]
                    sampler = asyncio.create_task(_sample_rss(server.pid, peak))
                    sse = await smoke.run_concurrently(
                        n,
                        c,
                        sse_reply,
                        smoke.Progress(self, f"{key} sse", n, verbosity),
                        spread,
                    )
                    sampler.cancel()
                    cpu = smoke.cpu_seconds(server.pid) - cpu0
                    writes = None
                    if pg_url:
                        writes = (await _pg_writes_settled(pg_url) or 0) - (writes0 or 0)
                    ws: list[smoke.StreamResult] = []
                    if browser is not None:
                        ws = await self._websocket_level(
                            browser, server.url, n, c, spread, options, f"{key} websocket"
                        )
                    measured = _Measured(direct, relayed, sse, ws, cpu, relay_cpu)
                    self._record(report, key, c, measured, peak[0] - rss0, writes)
            finally:
                if browser is not None:
                    await browser.aclose()
        self._check(report, backend, levels, options)

    async def _websocket_level(
        self,
        browser: httpx.AsyncClient,
        url: str,
        n: int,
        c: int,
        spread: float,
        options: dict[str, Any],
        label: str,
    ) -> list[smoke.StreamResult]:
        """`n` replies from `c` people, each on a thread page of their own. A page keeps its
        socket open from one message to the next, as a browser does (`--socket-per-reply`:
        a new socket for every reply, as if the page were reloaded before each send)."""
        model = ":".join(smoke.FAKE_MODEL)
        pages: asyncio.Queue[tuple[str, smoke.WebSocket | None]] = asyncio.Queue()
        for _ in range(c):
            page = await smoke.new_page_thread(browser, url)
            socket = None
            if not options["socket_per_reply"]:
                socket = await smoke.open_page_socket(browser, url, page)
            pages.put_nowait((page, socket))

        async def reply(i: int) -> smoke.StreamResult:
            page, socket = await pages.get()  # one reply at a time per page
            try:
                result = await smoke.stream_over_websocket(browser, url, page, model, socket)
                if socket is not None and not result.ok:
                    # Whatever broke, the next reply on this page gets a fresh socket.
                    await socket.close()
                    socket = await smoke.open_page_socket(browser, url, page)
                return result
            finally:
                pages.put_nowait((page, socket))

        try:
            return await smoke.run_concurrently(
                n, c, reply, smoke.Progress(self, label, n, options["verbosity"]), spread
            )
        finally:
            while not pages.empty():
                _, socket = pages.get_nowait()
                if socket is not None:
                    await socket.close()

    def _record(
        self,
        report: smoke.Report,
        key: str,
        c: int,
        m: _Measured,
        rss_delta: int,
        writes: int | None,
    ) -> None:
        def stat(results: list[smoke.StreamResult], attr: str) -> dict[str, float | None]:
            return smoke.summarize([getattr(r, attr) for r in results if getattr(r, attr)])

        direct, sse, ws, cpu_s = m.direct, m.sse, m.ws, m.cpu_s
        paths = (
            {"direct": direct}
            | ({"relay": m.relay} if m.relay else {})
            | {"sse": sse}
            | ({"websocket": ws} if ws else {})
        )
        for path, results in paths.items():
            report.metrics[f"{key} {path} ttft"] = stat(results, "ttft_ms")
            report.metrics[f"{key} {path} latency"] = stat(results, "latency_ms")
        d_ttft, d_lat = (
            report.metrics[f"{key} direct ttft"],
            report.metrics[f"{key} direct latency"],
        )
        added: dict[str, Any] = {}
        for path in [p for p in paths if p != "direct"]:
            ttft, lat = (
                report.metrics[f"{key} {path} ttft"],
                report.metrics[f"{key} {path} latency"],
            )
            for p in ("p50", "p95"):
                added[f"{path} ttft {p}"] = _minus(ttft[p], d_ttft[p])
                added[f"{path} latency {p}"] = _minus(lat[p], d_lat[p])
        ok_replies = sum(r.ok for r in sse)
        chunks_per_reply = sum(len(r.events) for r in direct if r.ok) / max(
            1, sum(r.ok for r in direct)
        )
        relay_info: dict[str, Any] = {}
        cpu_ms_per_reply = cpu_s * 1000 / max(1, ok_replies)
        if m.relay:
            relay_chunks = max(1.0, sum(r.ok for r in m.relay) * chunks_per_reply)
            relay_info["relay_cpu_ms_per_chunk"] = round(m.relay_cpu_s * 1000 / relay_chunks, 4)
            relay_per_reply = m.relay_cpu_s * 1000 / max(1, sum(r.ok for r in m.relay))
            relay_info["relay_cpu_ms_per_reply"] = round(relay_per_reply, 2)
            # The machine-independent reading of the CPU figures: the app's per reply over a
            # bare relay's on the same machine, in the same run.
            relay_info["cpu_vs_relay"] = (
                round(cpu_ms_per_reply / relay_per_reply, 2) if relay_per_reply else None
            )
        report.info[key] = {
            "added_ms": added,
            "errors": {p: sum(not r.ok for r in rs) for p, rs in paths.items()},
            "error_samples": smoke.first_errors([*direct, *sse, *ws]),
            "upstream_chunks_per_reply": round(chunks_per_reply, 1),
            "cpu_ms_per_chunk": round(cpu_s * 1000 / max(1, ok_replies * chunks_per_reply), 4),
            "cpu_ms_per_reply": round(cpu_ms_per_reply, 2),
            **relay_info,
            "rss_kib_per_stream": round(rss_delta / 1024 / c, 1),
            "db_rows_written_per_reply": None
            if writes is None
            else round(writes / max(1, ok_replies), 2),
        }

    def _check(
        self, report: smoke.Report, backend: str, levels: list[int], options: dict[str, Any]
    ) -> None:
        for c in levels:
            info = report.info[f"{backend} c={c}"]
            added = info["added_ms"]
            if c == 25:
                report.checks.append(
                    smoke.Check(
                        f"{backend} added TTFT P95 @25 (sse)",
                        added["sse ttft p95"],
                        options["target_ttft_25_ms"],
                    )
                )
            if c == 50:
                report.checks += [
                    smoke.Check(
                        f"{backend} added TTFT P95 @50 (sse)",
                        added["sse ttft p95"],
                        options["target_ttft_50_ms"],
                    ),
                    smoke.Check(
                        f"{backend} added latency P95 @50 (sse)",
                        added["sse latency p95"],
                        options["target_latency_50_ms"],
                    ),
                ]
            report.checks.append(
                smoke.Check(f"{backend} errors @{c}", float(sum(info["errors"].values())), 0.0, "")
            )
            report.checks.append(
                smoke.Check(
                    f"{backend} CPU per chunk @{c}",
                    info["cpu_ms_per_chunk"],
                    options["target_cpu_per_chunk_ms"],
                )
            )
            if info["db_rows_written_per_reply"] is not None:
                report.checks.append(
                    smoke.Check(
                        f"{backend} DB rows written per reply @{c}",
                        info["db_rows_written_per_reply"],
                        options["target_writes_per_reply"],
                        "",
                    )
                )


@dataclass(frozen=True, slots=True)
class _Measured:
    """One level's results: each path's streams and the CPU the app and relay spent."""

    direct: list[smoke.StreamResult]
    relay: list[smoke.StreamResult]
    sse: list[smoke.StreamResult]
    ws: list[smoke.StreamResult]
    cpu_s: float
    relay_cpu_s: float


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 1)


async def _sample_rss(pid: int, peak: list[int]) -> None:
    while True:
        with contextlib.suppress(OSError):
            peak[0] = max(peak[0], smoke.rss_bytes(pid))
        await asyncio.sleep(0.05)


async def _pg_writes(url: str | None) -> int | None:
    if url is None:
        return None
    import psycopg

    conn = await psycopg.AsyncConnection.connect(url.replace("postgres://", "postgresql://"))
    async with conn:
        row = await (await conn.execute(PG_WRITES)).fetchone()
    return int(row[0]) if row else 0


async def _pg_writes_settled(url: str | None) -> int | None:
    """`_pg_writes` once no more writes arrive (so that none of a level's spill into the
    next level's count)."""
    if url is None:
        return None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PG_SETTLE_MAX_S
    last = await _pg_writes(url)
    while loop.time() < deadline:
        await asyncio.sleep(PG_SETTLE_S)
        now = await _pg_writes(url)
        if now == last:
            break
        last = now
    return last


def _mode(options: dict[str, Any]) -> dict[str, str]:
    """Production settings for the spawned app, unless --debug (plain HTTP on loopback: no
    HTTPS redirect or HSTS; cookies stay Secure, the client copes)."""
    if options["debug"]:
        return {"DEBUG": "true"}
    return {
        "DEBUG": "false",
        "SECRET_KEY": secrets.token_urlsafe(48),
        "SECURE_SSL_REDIRECT": "false",
        "SECURE_HSTS_SECONDS": "0",
        "DEMO_PASSWORD": secrets.token_urlsafe(12),
    }
