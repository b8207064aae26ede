"""Measure the thread page in real headless Chromium under mobile-like throttling.

1. Start the app (daphne on a free port, temp SQLite, demo user), or use --url.
2. Log in, open a new chat and finish one exchange so the page has a rendered reply.
3. For each run, cold-load the thread page with the cache disabled, Lighthouse's mobile
   network (150 ms RTT, 1.6 Mbps down, 750 kbps up) and 4x CPU slowdown via CDP, and read
   LCP and CLS from PerformanceObserver and the page's scripts (gzipped) from the network.
4. Press Send and time, inside the page, from the submit event to the first skeleton on
   screen and to the server's turn (the POST answer) on screen.
5. Print medians; --json prints every run too.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Lighthouse's "Slow 4G" mobile preset (devtools throttling values).
NETWORK = {
    "offline": False,
    "latency": 150,
    "downloadThroughput": 1.6 * 1024 * 1024 / 8,
    "uploadThroughput": 750 * 1024 / 8,
}
CPU_SLOWDOWN = 4
MOBILE = {
    "viewport": {"width": 412, "height": 823},
    "device_scale_factor": 2.625,
    "is_mobile": True,
    "has_touch": True,
}
TARGETS = {"lcp_ms": 1500, "cls": 0.02, "initial_js_gzip_kb": 30, "skeleton_ms": 100}

# Observers installed before any page script; LCP and CLS as the Web Vitals define them
# (CLS here is the page's total, which for one short load is its only session window).
OBSERVE_VITALS = """
window.__vitals = {lcp: 0, cls: 0};
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) window.__vitals.lcp = e.renderTime || e.loadTime || e.startTime;
}).observe({type: "largest-contentful-paint", buffered: true});
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) if (!e.hadRecentInput) window.__vitals.cls += e.value;
}).observe({type: "layout-shift", buffered: true});
"""

# Times Send in the page itself, so Playwright's round trips are not counted.
WATCH_SEND = """
() => {
  window.__send = {};
  const list = document.getElementById("message-list");
  const before = new Set([...list.querySelectorAll("article")].map((a) => a.id));
  document.getElementById("compose").addEventListener("submit", () => {
    window.__send.t0 = performance.now();
  }, {capture: true, once: true});
  new MutationObserver((_, observer) => {
    const now = performance.now();
    if (window.__send.t0 === undefined) return;
    if (window.__send.skeleton === undefined && list.querySelector(".skeleton")) {
      window.__send.skeleton = now - window.__send.t0;
    }
    const turn = [...list.querySelectorAll("article[data-active]")].find((a) => !before.has(a.id));
    if (turn && window.__send.turn === undefined) {
      window.__send.turn = now - window.__send.t0;
      observer.disconnect();
    }
  }).observe(list, {childList: true, subtree: true});
}
"""


class Command(BaseCommand):
    help = "Print LCP, CLS, initial JS (gzipped) and skeleton-after-Send from headless Chromium."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--url", default="", help="A running server; default: start one.")
        parser.add_argument("--username", default="demo")
        parser.add_argument("--password", default="demo-password")
        parser.add_argument("--runs", type=int, default=3)
        parser.add_argument("--no-throttle", action="store_true", help="Measure unthrottled.")
        parser.add_argument("--json", action="store_true", help="Print every run as JSON.")

    def handle(self, *args: Any, **options: Any) -> str:
        if not Path(CHROMIUM).exists():
            raise CommandError(f"{CHROMIUM} is missing (apt-get install chromium).")
        with _server(options["url"]) as url:
            runs = measure(
                url,
                options["username"],
                options["password"],
                runs=options["runs"],
                throttle=not options["no_throttle"],
            )
        result = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        if options["json"]:
            self.stdout.write(json.dumps({"median": result, "runs": runs}, indent=2))
        for key, value in result.items():
            target = TARGETS.get(key)
            verdict = ""
            if target is not None:
                verdict = "  ok" if value <= target else f"  over target {target}"
            self.stdout.write(f"{key:>20}: {value:.3f}{verdict}" if key == "cls" else
                              f"{key:>20}: {value:.0f}{verdict}")  # fmt: skip
        throttling = "unthrottled" if options["no_throttle"] else "slow 4G + 4x CPU"
        return (
            f"page ({throttling}, median of {len(runs)}): LCP {result['lcp_ms']:.0f} ms, "
            f"CLS {result['cls']:.3f}, JS {result['initial_js_gzip_kb']:.1f} KB gz, "
            f"skeleton {result['skeleton_ms']:.0f} ms"
        )


@contextlib.contextmanager
def _server(url: str) -> Iterator[str]:
    if url:
        yield url.rstrip("/")
        return
    from threads.smoke import AppServer

    with AppServer(env={"DEBUG": "true", "DEMO_TTFT_MS": "250"}) as app:
        yield app.url


def launch(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def measure(
    url: str, username: str, password: str, runs: int = 3, throttle: bool = True
) -> list[dict[str, float]]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch(p)
        try:
            context = browser.new_context(**MOBILE)
            page = context.new_page()
            page.goto(f"{url}/accounts/login/")
            page.fill("#id_username", username)
            page.fill("#id_password", password)
            page.click("button[type=submit]")
            page.wait_for_selector("main.chat")
            page.click("button.new-thread")
            page.wait_for_selector("#compose-content")
            thread_url = page.url
            send_and_finish(page, "Show me a table and some code, please.")
            page.close()
            return [_one_run(context, thread_url, throttle) for _ in range(runs)]
        finally:
            browser.close()


def send_and_finish(page: Any, text: str) -> None:
    """Send `text` and wait until its reply has been swapped in whole."""
    before = page.locator("#message-list article.msg-assistant[id^=msg-]").count()
    page.fill("#compose-content", text)
    page.press("#compose-content", "Enter")
    page.wait_for_function(
        "(n) => document.querySelectorAll('#message-list article.msg-assistant[id^=msg-]').length > n"
        " && !document.querySelector('#message-list article[data-active]')",
        arg=before,
        timeout=60_000,
    )


def _one_run(context: Any, thread_url: str, throttle: bool) -> dict[str, float]:
    page = context.new_page()
    page.add_init_script(OBSERVE_VITALS)
    cdp = context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.setCacheDisabled", {"cacheDisabled": True})
    if throttle:
        cdp.send("Network.emulateNetworkConditions", NETWORK)
        cdp.send("Emulation.setCPUThrottlingRate", {"rate": CPU_SLOWDOWN})
    scripts: list[Any] = []
    page.on(
        "response", lambda r: scripts.append(r) if r.request.resource_type == "script" else None
    )
    page.goto(thread_url, wait_until="load")
    page.wait_for_load_state("networkidle")
    # LCP is final once the page has painted after load; two frames make sure it has.
    page.evaluate("() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))")
    vitals = page.evaluate("() => window.__vitals")
    js_gzip = sum(len(gzip.compress(r.body(), 9)) for r in scripts)

    page.evaluate(WATCH_SEND)
    page.fill("#compose-content", "One more, briefly.")
    page.click("button.send")
    page.wait_for_function("() => window.__send.turn !== undefined", timeout=30_000)
    send = page.evaluate("() => window.__send")
    page.wait_for_function(
        "() => !document.querySelector('#message-list article[data-active]')", timeout=60_000
    )
    page.close()
    return {
        "lcp_ms": float(vitals["lcp"]),
        "cls": float(vitals["cls"]),
        "initial_js_gzip_kb": js_gzip / 1024,
        "skeleton_ms": float(send["skeleton"]),
        "server_turn_ms": float(send["turn"]),
    }
