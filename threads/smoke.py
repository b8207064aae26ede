"""Shared machinery of the smoke and benchmark commands (smoke_*, bench_overhead).

A streaming client for the SSE endpoint, a minimal WebSocket client, percentiles, the result
table and its JSON form, and private app / fake-provider processes on free ports.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

BASE_DIR = Path(settings.BASE_DIR)
BIN_DIR = Path(sys.executable).parent
DEFAULT_URL = "http://127.0.0.1:8000"
READY_TIMEOUT_S = 30.0
# A socket that goes this long without a frame mid-reply counts as an error, not a hang.
WS_FRAME_TIMEOUT_S = 30.0
# The fake provider's pace for smoke and bench runs (the issue's reference stream).
FAKE_STREAM = {"ttft_ms": 200, "tokens": 50, "pace_ms": 20}
FAKE_MODEL = ("openai", "gpt-4o-mini")
PROMPT = "Say something for the smoke test."


# --- Statistics and output ----------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def summarize(values: Sequence[float]) -> dict[str, float | None]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values) if values else None,
    }


@dataclass
class Check:
    """One target: `value` must be at most `limit` (both in `unit`)."""

    name: str
    value: float | None
    limit: float
    unit: str = "ms"

    @property
    def passed(self) -> bool:
        return self.value is not None and self.value <= self.limit

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "limit": self.limit,
            "unit": self.unit,
            "passed": self.passed,
        }


@dataclass
class Report:
    title: str
    metrics: dict[str, dict[str, float | None]] = field(default_factory=dict)  # name -> summary
    checks: list[Check] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "passed": self.passed,
            "metrics": self.metrics,
            "checks": [c.to_dict() for c in self.checks],
            "info": self.info,
        }

    def table(self) -> str:
        lines = [self.title, ""]
        if self.metrics:
            w = max(28, *(len(name) + 2 for name in self.metrics))
            head = f"{'metric':<{w}}{'n':>6}{'P50':>10}{'P95':>10}{'P99':>10}{'max':>10}"
            lines += [head, "-" * len(head)]
            for name, s in self.metrics.items():
                cells = "".join(f"{_fmt(s.get(k)):>10}" for k in ("p50", "p95", "p99", "max"))
                lines.append(f"{name:<{w}}{s.get('n') or 0:>6}{cells}")
            lines.append("")
        for key, value in self.info.items():
            if isinstance(value, dict):
                lines.append(f"{key}:")
                lines += [f"  {k}: {_fmt(v)}" for k, v in value.items()]
            else:
                lines.append(f"{key}: {value}")
        if self.info:
            lines.append("")
        for c in self.checks:
            verdict = "PASS" if c.passed else "FAIL"
            lines.append(f"{verdict}  {c.name}: {_fmt(c.value)} {c.unit} (target <= {c.limit:g})")
        lines.append(f"\n{'PASS' if self.passed else 'FAIL'}")
        return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if 0 < abs(value) < 1:  # CPU per chunk: 0.24 against a 0.2 target must not read 0.2
            return f"{value:.2f}"
        return f"{value:.1f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


class Progress:
    """A one-line counter on stderr (only at verbosity >= 1 and when stderr is a terminal,
    or always at verbosity >= 2)."""

    def __init__(self, command: BaseCommand, label: str, total: int, verbosity: int) -> None:
        self.command, self.label, self.total = command, label, total
        self.done = 0
        self.errors = 0
        self.tty = verbosity >= 2 or (verbosity >= 1 and sys.stderr.isatty())
        self.last = 0.0

    def tick(self, ok: bool) -> None:
        self.done += 1
        self.errors += not ok
        now = time.monotonic()
        if self.tty and (now - self.last > 0.2 or self.done == self.total):
            self.last = now
            end = "\n" if self.done == self.total else "\r"
            self.command.stderr.write(
                f"{self.label}: {self.done}/{self.total} ({self.errors} errors)", ending=end
            )


# --- Command base -------------------------------------------------------------------------


class SmokeCommand(BaseCommand):
    """Common options and output of the smoke commands."""

    def add_common_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--url", default=DEFAULT_URL, help="App root (default: local).")
        parser.add_argument(
            "--api-key", default="", help="Bearer key; created for demo-org when local."
        )
        parser.add_argument("--provider", default="", help="Default: demo (openai with --fake).")
        parser.add_argument("--model", default="", help="Default: demo-chat (gpt-4o-mini).")
        parser.add_argument("--json", action="store_true", help="Print the report as JSON.")
        parser.add_argument(
            "--spawn",
            action="store_true",
            help="Start a private server (daphne, temp SQLite) on a free port instead of --url.",
        )
        parser.add_argument(
            "--fake",
            action="store_true",
            help="With --spawn: also start the fake provider (200 ms TTFT, 50 tokens, 20 ms).",
        )
        parser.add_argument(
            "--fake-script",
            default="",
            help="With --fake: JSON controls for the fake instead, e.g. '{\"status\": 400}'.",
        )
        parser.add_argument("--timeout", type=float, default=60.0, help="Per request, seconds.")

    def handle(self, *args: Any, **options: Any) -> str:
        """Measure against the target (`--url` or `--spawn`) and print the report."""
        with self.target(options) as target:
            report = asyncio.run(self.measure(target, options))
        return self.emit(report, options["json"])

    async def measure(self, target: Target, options: dict[str, Any]) -> Report:
        raise NotImplementedError  # commands that use the default handle() say what they time

    def emit(self, report: Report, as_json: bool) -> str:
        self.stdout.write(json.dumps(report.to_dict(), indent=2) if as_json else report.table())
        if not report.passed:
            failed = ", ".join(c.name for c in report.checks if not c.passed)
            raise CommandError(f"{report.title}: FAIL ({failed})")
        # With --json the document is the whole output, so machines can parse stdout.
        return "" if as_json else f"{report.title}: PASS"

    @contextlib.contextmanager
    def target(self, options: dict[str, Any]) -> Iterator[Target]:
        """The app under test: --url, or a private server (with the fake) for --spawn."""
        with contextlib.ExitStack() as stack:
            env: dict[str, str] = {}
            fake = None
            if options["fake"]:
                if not options["spawn"]:
                    raise CommandError("--fake needs --spawn (the fake is wired in at start).")
                fake = stack.enter_context(FakeProvider())
                controls = json.loads(options["fake_script"]) if options["fake_script"] else None
                fake.script(controls)
                env |= fake.app_env()
            if options["spawn"]:
                server = stack.enter_context(AppServer(env))
                url, key = server.url, options["api_key"] or server.create_api_key()
            else:
                url = options["url"].rstrip("/")
                key = options["api_key"] or local_api_key(url)
            provider = options["provider"] or (FAKE_MODEL[0] if fake else "demo")
            model = options["model"] or (FAKE_MODEL[1] if fake else "demo-chat")
            log = str(server.log_path) if options["spawn"] else ""
            yield Target(url, key, provider, model, log)


@dataclass
class Target:
    url: str
    api_key: str
    provider: str
    model: str
    log: str = ""  # the spawned server's log file

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


def local_api_key(url: str) -> str:
    """A fresh key for demo-org in this project's database (the local server's)."""
    host = httpx.URL(url).host
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise CommandError(f"{url} is not local: pass --api-key.")
    from django.core.management import call_command

    from .models import ApiKey, Organization

    call_command("bootstrap_demo", verbosity=0)
    _key, raw = ApiKey.issue(Organization.objects.get(slug="demo-org"), "smoke")
    return raw


# --- Processes ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = READY_TIMEOUT_S) -> None:
    """Poll `url` until it answers 200, the process dies or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise CommandError(f"the process serving {url} exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        time.sleep(0.05)
    raise CommandError(f"{url} not ready after {timeout:.0f} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# providers/fake/ needs only the standard library: serving it without Django starts in a
# fraction of `manage.py fake_provider`'s time.
_SERVE_FAKE = """
import asyncio, sys
from providers.fake import FakeProviderServer
async def main():
    server = FakeProviderServer()
    await server.start("127.0.0.1", int(sys.argv[1]))
    await server.serve_forever()
asyncio.run(main())
"""


class _Spawned:
    """A child process started on entering and stopped on leaving (the app, the relay)."""

    proc: subprocess.Popen[bytes] | None = None

    def _start(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            _stop(self.proc)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


class FakeProvider(_Spawned):
    """The fake vendor server (providers/fake/) on a free port, as a subprocess."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def _start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVE_FAKE, str(self.port)],
            cwd=BASE_DIR,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_ready(f"{self.url}/_fake/requests", self.proc)

    def script(self, controls: dict[str, Any] | None = None, times: int = 1_000_000) -> None:
        """Every request to the fake's OpenAI gpt-4o-mini gets `controls` (default FAKE_STREAM)."""
        body = {"vendor": "openai", "model": FAKE_MODEL[1], "times": times}
        httpx.post(f"{self.url}/_fake/reset", timeout=5)
        httpx.post(f"{self.url}/_fake/script", json=body | (controls or FAKE_STREAM), timeout=5)

    def app_env(self) -> dict[str, str]:
        return {"OPENAI_API_KEY": "test", "OPENAI_BASE_URL": f"{self.url}/openai/v1"}


class Relay(_Spawned):
    """The bare relay (threads/bench_relay.py) under daphne on a free port, in front of
    `upstream`: the yardstick bench_overhead reads the app's overhead against."""

    def __init__(self, upstream: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.upstream = upstream

    def _start(self) -> None:
        self.proc = subprocess.Popen(
            [str(BIN_DIR / "daphne"), "-b", "127.0.0.1", "-p", str(self.port)]
            + ["threads.bench_relay:application"],
            cwd=BASE_DIR,
            env={**os.environ, "UPSTREAM": self.upstream},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_ready(f"{self.url}/healthz", self.proc)


_PREPARE = """
import django
django.setup()
from django.core.management import call_command
from threads.models import ApiKey, Organization
call_command("migrate", verbosity=0)
call_command("bootstrap_demo", verbosity=0)
from django.conf import settings
if not settings.DEBUG:  # production static storage serves only what was collected
    call_command("collectstatic", "--noinput", verbosity=0)
print(ApiKey.issue(Organization.objects.get(slug="demo-org"), "smoke")[1])
"""


class AppServer(_Spawned):
    """The app under daphne on a free port, on the embedded defaults (temp SQLite, in-memory
    layer) unless `env` names DATABASE_URL / REDIS_URL. `start=False` prepares the database and key without starting (cold start)."""

    def __init__(self, env: dict[str, str] | None = None, start: bool = True) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tmp = tempfile.mkdtemp(prefix="smoke-")
        self.env = {**os.environ, "SITE_URL": self.url, **(env or {})}
        self.env["DJANGO_SETTINGS_MODULE"] = "chatproject.settings"
        # Embedded defaults unless the caller names the services: a stray REDIS_URL or
        # DATABASE_URL in our own environment (the CI's second run) must not leak in.
        if "REDIS_URL" not in (env or {}):
            self.env.pop("REDIS_URL", None)
        if "DATABASE_URL" not in (env or {}):
            self.env.pop("DATABASE_URL", None)
            self.env["SQLITE_PATH"] = str(Path(self.tmp) / "db.sqlite3")
        self.start_on_enter = start
        # Outside the temp dir, so it outlives the run for a post-mortem of any error.
        self.log_path = Path(tempfile.gettempdir()) / f"smoke-daphne-{self.port}.log"
        self.api_key = ""

    def prepare(self) -> None:
        """Migrate, bootstrap demo-org and issue a key, in one process (Django starts once)."""
        result = subprocess.run(
            [sys.executable, "-c", _PREPARE],
            cwd=BASE_DIR,
            env=self.env,
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise CommandError(f"preparing the database failed: {result.stderr.strip()[-800:]}")
        self.api_key = result.stdout.strip().splitlines()[-1]

    def create_api_key(self) -> str:
        return self.api_key

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(BIN_DIR / "daphne"), "-b", "127.0.0.1", "-p", str(self.port)]
                + ["chatproject.asgi:application"],
                cwd=BASE_DIR,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait(self) -> None:
        assert self.proc is not None
        try:
            wait_ready(f"{self.url}/healthz", self.proc)
        except CommandError as exc:
            raise CommandError(f"{exc}; log: {self.log_tail()}") from None

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-800:]
        return ""

    def _start(self) -> None:
        self.prepare()
        if self.start_on_enter:
            self.start()
            self.wait()

    def __exit__(self, *exc: object) -> None:
        super().__exit__()
        shutil.rmtree(self.tmp, ignore_errors=True)
        # Keep the log only when it has something to show.
        with contextlib.suppress(OSError):
            if "Traceback" not in self.log_path.read_text(errors="replace"):
                self.log_path.unlink()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


# --- Clients ------------------------------------------------------------------------------


@dataclass
class StreamResult:
    ok: bool = False
    error: str = ""
    status: str = ""  # the done event's status
    message_id: str = ""
    thread_id: str = ""
    ttft_ms: float | None = None
    latency_ms: float | None = None
    deltas: int = 0
    first_token_at: float | None = None  # time.perf_counter() at the first delta
    events: list[str] = field(default_factory=list)


def client(limit: int = 200, timeout: float = 60.0) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=limit, max_keepalive_connections=limit)
    return httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(timeout, connect=10.0))


async def create_thread(http: httpx.AsyncClient, target: Target) -> str:
    response = await http.post(
        f"{target.url}/api/threads", json={"title": "smoke"}, headers=target.headers
    )
    if response.status_code != 201:
        raise CommandError(f"POST /api/threads: {response.status_code} {response.text[:200]}")
    return str(response.json()["id"])


async def stream_reply(
    http: httpx.AsyncClient,
    target: Target,
    thread_id: str,
    on_event: Callable[[str, dict[str, Any], StreamResult], Any] | None = None,
    content: str = PROMPT,
) -> StreamResult:
    """POST a message to the SSE endpoint and read the reply to its end.

    TTFT is request start to the first `delta`; latency is request start to `done`.
    `on_event(name, data, result)` may return an awaitable (it is awaited in line).
    """
    result = StreamResult(thread_id=thread_id)
    body = {"content": content, "provider": target.provider, "model": target.model}
    body["client_id"] = uuid.uuid4().hex
    started = time.perf_counter()
    try:
        async with http.stream(
            "POST",
            f"{target.url}/api/threads/{thread_id}/messages/stream",
            json=body,
            headers=target.headers,
        ) as response:
            if response.status_code != 200:
                await response.aread()
                result.error = f"HTTP {response.status_code}: {response.text[:200]}"
                return result
            name = ""
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
                    result.events.append(name)
                    now = time.perf_counter()
                    if name == "start":
                        result.message_id = data.get("message_id", "")
                    elif name == "delta":
                        result.deltas += 1
                        if result.ttft_ms is None:
                            result.ttft_ms = (now - started) * 1000
                            result.first_token_at = now
                    elif name == "error":
                        result.error = f"{data.get('code')}: {data.get('message')}"
                    elif name == "done":
                        result.latency_ms = (now - started) * 1000
                        result.status = data.get("status", "")
                    if on_event is not None:
                        outcome = on_event(name, data, result)
                        if asyncio.iscoroutine(outcome):
                            await outcome
                    if name == "done":
                        break
    except (httpx.HTTPError, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    if result.latency_ms is None and not result.error:
        result.error = "the stream ended without done"
    result.ok = not result.error and result.status == "complete"
    if not result.ok and not result.error:
        result.error = f"done with status {result.status!r}"
    return result


async def stream_direct(
    http: httpx.AsyncClient, fake_url: str, model: str = FAKE_MODEL[1]
) -> StreamResult:
    """Stream a completion straight from the fake's OpenAI API (the baseline)."""
    result = StreamResult()
    body = {
        "model": model,
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": PROMPT}],
    }
    started = time.perf_counter()
    try:
        async with http.stream(
            "POST",
            f"{fake_url}/openai/v1/chat/completions",
            json=body,
            headers={"Authorization": "Bearer test"},
        ) as response:
            if response.status_code != 200:
                await response.aread()
                result.error = f"HTTP {response.status_code}"
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                result.events.append("data")
                if line == "data: [DONE]":
                    result.latency_ms = (time.perf_counter() - started) * 1000
                    break
                chunk = json.loads(line[6:])
                choices = chunk.get("choices") or [{}]
                if choices[0].get("delta", {}).get("content"):
                    result.deltas += 1
                    if result.ttft_ms is None:
                        result.ttft_ms = (time.perf_counter() - started) * 1000
    except (httpx.HTTPError, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    result.ok = result.latency_ms is not None
    result.status = "complete" if result.ok else ""
    return result


async def run_concurrently(
    jobs: int,
    concurrency: int,
    job: Callable[[int], Any],
    progress: Progress | None = None,
    spread_s: float = 0.0,
) -> list[StreamResult]:
    """Run `job(i)` for i in range(jobs), at most `concurrency` at a time (ab -n/-c).

    With `spread_s`, the workers start evenly spread over that long instead of at once:
    `concurrency` people chatting, not `concurrency` sends in the same millisecond.
    """
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(jobs):
        queue.put_nowait(i)
    results: list[StreamResult] = []

    async def worker(k: int) -> None:
        if spread_s:
            await asyncio.sleep(k * spread_s / concurrency)  # this worker's place in the spread
        while not queue.empty():
            i = queue.get_nowait()
            try:
                result = await job(i)
            except Exception as exc:  # one broken request must not stop the run
                result = StreamResult(error=f"{type(exc).__name__}: {exc}")
            results.append(result)
            if progress is not None:
                progress.tick(result.ok)

    await asyncio.gather(*(worker(k) for k in range(min(concurrency, jobs))))
    return results


def error_rate(results: Sequence[StreamResult]) -> float:
    return 100.0 * sum(not r.ok for r in results) / len(results) if results else 100.0


def first_errors(results: Sequence[StreamResult], limit: int = 3) -> list[str]:
    return sorted({r.error for r in results if r.error})[:limit]


# --- WebSocket (the browser's path) -------------------------------------------------------


class WebSocket:
    """A minimal RFC 6455 client: enough to read the app's text frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, url: str, headers: dict[str, str]) -> WebSocket:
        parsed = httpx.URL(url)
        reader, writer = await asyncio.open_connection(parsed.host, parsed.port)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {parsed.raw_path.decode()} HTTP/1.1",
            f"Host: {parsed.host}:{parsed.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *(f"{k}: {v}" for k, v in headers.items()),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            writer.close()
            raise ConnectionError(f"WebSocket refused: {head.split(b'\r\n', 1)[0]!r}")
        return cls(reader, writer)

    async def recv(self) -> str:
        """The next text message (pings are answered, other control frames skipped)."""
        parts: list[bytes] = []
        while True:
            b0, b1 = await self.reader.readexactly(2)
            length = b1 & 0x7F
            if length == 126:
                length = int.from_bytes(await self.reader.readexactly(2))
            elif length == 127:
                length = int.from_bytes(await self.reader.readexactly(8))
            payload = await self.reader.readexactly(length)
            opcode = b0 & 0x0F
            if opcode == 0x8:
                raise ConnectionError("WebSocket closed by the server")
            if opcode == 0x9:
                self._send(0xA, payload)
                continue
            if opcode in (0x1, 0x0):
                parts.append(payload)
                if b0 & 0x80:
                    return b"".join(parts).decode()

    def _send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        head = bytes([0x80 | opcode, 0x80 | len(payload)])  # control frames are short
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(head + mask + masked)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self._send(0x8, (1000).to_bytes(2))
            await self.writer.drain()
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


# Production settings mark cookies Secure; a bench over plain HTTP says it came through a
# TLS proxy (SECURE_PROXY_SSL_HEADER) and carries the cookies itself, as a browser would.
PROXY_HEADERS = {"X-Forwarded-Proto": "https"}


async def browser_session(
    url: str, username: str, password: str, behind_tls_proxy: bool = False
) -> httpx.AsyncClient:
    """An httpx client logged in as `username` (session and CSRF cookies set).

    `behind_tls_proxy`: for a server with DEBUG off, whose cookies are Secure (httpx keeps
    those for https URLs): the client sends X-Forwarded-Proto and its own Cookie header.
    """
    http = client()
    jar: dict[str, str] = {}
    if behind_tls_proxy:
        http.headers.update(PROXY_HEADERS)
        http.headers["Referer"] = url.replace("http://", "https://", 1) + "/"
    else:
        http.headers["Referer"] = f"{url}/"

    def keep(response: httpx.Response) -> None:
        for header in response.headers.get_list("set-cookie"):
            name, _, rest = header.partition("=")
            jar[name.strip()] = rest.split(";", 1)[0]
        if behind_tls_proxy:
            http.headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in jar.items())

    keep(await http.get(f"{url}/accounts/login/"))
    csrf = jar.get("csrftoken", "")
    response = await http.post(
        f"{url}/accounts/login/",
        data={"username": username, "password": password, "csrfmiddlewaretoken": csrf},
    )
    keep(response)
    if response.status_code != 302 or "sessionid" not in jar:
        await http.aclose()
        raise CommandError(f"login as {username!r} failed ({response.status_code})")
    http.headers["x-csrftoken"] = jar.get("csrftoken", csrf)
    return http


def cookie_header(http: httpx.AsyncClient) -> str:
    """The cookies `http` sends: its own Cookie header (behind_tls_proxy), else its jar."""
    return http.headers.get("Cookie") or "; ".join(f"{k}={v}" for k, v in http.cookies.items())


async def new_page_thread(http: httpx.AsyncClient, url: str) -> str:
    response = await http.post(f"{url}/t/new")
    location = response.headers.get("location", "")
    if response.status_code != 302 or "/t/" not in location:
        raise CommandError(f"POST /t/new: {response.status_code}")
    return location.rstrip("/").rsplit("/", 1)[-1]


async def open_page_socket(http: httpx.AsyncClient, url: str, thread_id: str) -> WebSocket:
    """The socket a thread's page opens when it loads."""
    ws_url = url.replace("http://", "ws://") + f"/ws/threads/{thread_id}/"
    return await WebSocket.connect(ws_url, {"Origin": url, "Cookie": cookie_header(http)})


_REPLY_ARTICLE = re.compile(r'<article id="msg-([0-9a-f-]{36})" class="msg msg-assistant"')


async def stream_over_websocket(
    http: httpx.AsyncClient, url: str, thread_id: str, model: str, ws: WebSocket | None = None
) -> StreamResult:
    """Send from the compose form and time the reply as the page's socket sees it.

    `ws`: the page's socket, open already, as a person sends one message after another from
    the same page (see open_page_socket); without it, a socket opened for this reply alone.
    TTFT: the POST's start to the reply's first token frame; latency: to its final render.
    """
    result = StreamResult(thread_id=thread_id)
    own = ws is None
    if ws is None:
        try:
            ws = await open_page_socket(http, url, thread_id)
        except (OSError, ConnectionError) as exc:
            result.error = f"connect: {exc}"
            return result
    try:
        started = time.perf_counter()
        response = await http.post(
            f"{url}/t/{thread_id}/send",
            data={"content": PROMPT, "model": model, "client_id": uuid.uuid4().hex},
            headers={"HX-Request": "true"},
        )
        if response.status_code != 200:
            result.error = f"send: HTTP {response.status_code}"
            return result
        found = _REPLY_ARTICLE.search(response.text)
        if found is None:
            result.error = "send: no reply in the response"
            return result
        code = found.group(1)
        result.message_id = code
        token_frame = f'<span id="body-{code}" hx-swap-oob="beforeend">'
        final_frame = f'<article id="msg-{code}"'
        while True:
            try:
                frame = await asyncio.wait_for(ws.recv(), WS_FRAME_TIMEOUT_S)
            except TimeoutError:
                seen = "the first token" if result.ttft_ms is None else "the final render"
                result.error = f"no frame for {WS_FRAME_TIMEOUT_S:.0f} s while waiting for {seen}"
                return result
            now = time.perf_counter()
            if frame.startswith(token_frame):
                result.deltas += 1
                if result.ttft_ms is None:
                    result.ttft_ms = (now - started) * 1000
            elif result.ttft_ms is not None and final_frame in frame and "outerHTML" in frame:
                result.latency_ms = (now - started) * 1000
                break
    except (OSError, ConnectionError, asyncio.IncompleteReadError, httpx.HTTPError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    finally:
        if own:
            await ws.close()
    result.ok = True
    result.status = "complete"
    return result
