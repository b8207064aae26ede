"""The thread page in headless Chromium: send, stream, stop, reload, tabs, states, safety."""

from __future__ import annotations

import subprocess
import sys

import pytest
from playwright.sync_api import expect

from threads.smoke import BASE_DIR

REPLY = "#message-list article.msg-assistant[id^=msg-]"
ACTIVE = "#message-list article[data-active]"


def send(page, text: str) -> None:
    page.fill("#compose-content", text)
    page.press("#compose-content", "Enter")


def last_reply(page):
    return page.locator(REPLY).last


def wait_done(page, timeout: int = 30_000) -> None:
    page.wait_for_function(
        f"() => document.querySelector('{REPLY}') && !document.querySelector('{ACTIVE}')",
        timeout=timeout,
    )


def set_org(live_app, **fields: str) -> None:
    code = (
        "import django; django.setup(); from threads.models import Organization; "
        f"Organization.objects.filter(slug='demo-org').update(**{fields!r})"
    )
    subprocess.run([sys.executable, "-c", code], cwd=BASE_DIR, env=live_app.env, check=True)


def test_it_sends_shows_a_skeleton_streams_and_renders_markdown(page):
    send(page, "Hello **there**")
    expect(page.locator("#message-list .skeleton").first).to_be_visible(timeout=2_000)
    reply = last_reply(page)
    expect(reply).to_have_attribute("data-active", "true")
    # Tokens arrive while the reply is still active, as escaped text.
    expect(reply.locator(".body.streaming")).not_to_be_empty()
    expect(reply).to_have_attribute("data-status", "complete", timeout=30_000)
    expect(reply.locator(".body.md strong").first).to_have_text("there")
    expect(reply.locator("footer.meta")).to_contain_text("demo-chat")
    expect(page.locator("#announcer")).to_have_text("Reply finished.")


def test_escape_stops_mid_stream_and_focus_returns(page):
    send(page, "Tell me a long story")
    reply = last_reply(page)
    expect(reply.locator(".body.streaming")).not_to_be_empty()
    page.locator("#model-picker").focus()
    page.keyboard.press("Escape")
    expect(reply).to_have_attribute("data-status", "cancelled")
    expect(reply.locator(".status.stopped")).to_have_text("Stopped.")
    expect(page.locator("#compose-content")).to_be_focused()
    expect(reply.locator("button", has_text="Retry")).to_be_visible()


def test_a_reload_mid_stream_continues_the_reply(page):
    send(page, "Keep going after a reload")
    expect(last_reply(page).locator(".body.streaming")).not_to_be_empty()
    page.reload()
    reply = last_reply(page)
    expect(reply).to_have_attribute("data-active", "true")
    expect(reply).to_have_attribute("data-status", "complete", timeout=30_000)
    expect(reply.locator(".body")).to_contain_text("Keep going after a reload")


def test_two_tabs_on_one_thread_see_the_same_stream(page, context):
    other = context.new_page()
    other.goto(page.url)
    other.wait_for_load_state("networkidle")
    send(page, "Seen in both tabs")
    expect(other.locator("#message-list .msg-user .body").last).to_have_text(
        "Seen in both tabs", timeout=5_000
    )
    expect(other.locator(REPLY).last.locator(".body.streaming")).not_to_be_empty()
    wait_done(page)
    wait_done(other)
    assert page.locator(REPLY).last.inner_text() == other.locator(REPLY).last.inner_text()
    assert other.locator(REPLY).count() == 1


def test_an_xss_payload_stays_inert_while_streaming_and_after(page):
    # The demo provider echoes the message, so the payload comes back as model output.
    payload = (
        "<img src=x onerror=window.__xss=1> <script>window.__xss=2</script> "
        "[click](javascript:window.__xss=3) <b onmouseover=window.__xss=4>b</b>"
    )
    send(page, payload)
    reply = last_reply(page)
    expect(reply.locator(".body.streaming")).to_contain_text("<img", timeout=15_000)
    assert reply.locator(".body img, .body script, .body b").count() == 0
    expect(reply).to_have_attribute("data-status", "complete", timeout=30_000)
    body = reply.locator(".body")
    expect(body).to_contain_text("<img src=x onerror=window.__xss=1>")
    assert body.locator("img, script, b, [onerror], [onmouseover]").count() == 0
    assert body.locator("a[href^=javascript]").count() == 0
    for link in body.locator("a").all():
        assert link.get_attribute("rel") == "noopener noreferrer nofollow"
        assert link.get_attribute("target") == "_blank"
    page.locator("#message-list .msg-user .body").last.hover()
    assert page.evaluate("() => window.__xss") is None


def test_keyboard_shift_enter_adds_a_line_and_enter_sends(page):
    box = page.locator("#compose-content")
    box.fill("first line")
    box.press("Shift+Enter")
    box.type("second line")
    expect(box).to_have_value("first line\nsecond line")
    assert page.locator("#message-list .msg-user").count() == 0
    box.press("Enter")
    expect(page.locator("#message-list .msg-user .body").last).to_have_text(
        "first line\nsecond line"
    )
    expect(box).to_have_value("")
    expect(box).to_be_focused()
    wait_done(page)


def test_it_works_at_360px_without_horizontal_scroll(page):
    send(page, "| a | b |\n|---|---|\n| " + "wide " * 40 + "| x |")
    wait_done(page)
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 360


def test_a_rate_limited_provider_shows_hold_on_then_answers(page, fake_vendor):
    fake_vendor.script({"status": 429, "retry_after": "2"}, times=1)
    httpx_script(fake_vendor, {"ttft_ms": 100, "tokens": 20, "pace_ms": 20})
    page.select_option("#model-picker", "openai:gpt-4o-mini")
    send(page, "Through a rate limit")
    reply = last_reply(page)
    status = reply.locator(".status")
    expect(status).not_to_be_empty(timeout=10_000)
    assert status.get_attribute("data-state") in {"waiting", "retrying", "queued"}
    expect(reply).to_have_attribute("data-status", "complete", timeout=30_000)
    expect(reply.locator("footer.meta")).to_contain_text("gpt-4o-mini")


def test_a_failing_provider_falls_back_with_a_notice(page, fake_vendor, live_app):
    set_org(live_app, fallback_models="demo:demo-chat")
    try:
        fake_vendor.script({"status": 503}, times=100)
        page.select_option("#model-picker", "openai:gpt-4o-mini")
        send(page, "Through a fallback")
        reply = last_reply(page)
        expect(reply).to_have_attribute("data-status", "complete", timeout=40_000)
        expect(reply.locator(".meta-fallback")).to_have_text("fallback from gpt-4o-mini")
    finally:
        set_org(live_app, fallback_models="")


def httpx_script(fake_vendor, controls: dict) -> None:
    """Queue one more scenario after those already queued (script() resets first)."""
    import httpx

    from threads.smoke import FAKE_MODEL

    body = {"vendor": "openai", "model": FAKE_MODEL[1], "times": 1000, **controls}
    httpx.post(f"{fake_vendor.url}/_fake/script", json=body, timeout=5)


pytestmark = [pytest.mark.browser]
