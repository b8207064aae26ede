from __future__ import annotations

import httpx
import pytest

from providers import registry
from providers.base import Finish, TextDelta
from providers.fake import Controls, env_lines, split_model
from tests.fake_server import chat, collect


def test_the_model_suffix_grammar():
    name, controls = split_model("gpt-4o-mini~429~retry=4~nousage~cut")
    assert name == "gpt-4o-mini"
    parsed = Controls.from_layers(controls)
    assert (parsed.status, parsed.retry_after, parsed.no_usage, parsed.fault) == (
        429,
        "4",
        True,
        "cut",
    )


def test_control_endpoints_script_record_and_reset(fake_provider):
    with httpx.Client(base_url=fake_provider.url) as client:
        scripted = client.post("/_fake/script", json={"vendor": "openai", "status": 503})
        assert scripted.json() == {"ok": True}
        answer = client.post(
            "/openai/v1/chat/completions",
            headers={"authorization": "Bearer k"},
            json={"model": "gpt-4o", "messages": [], "stream": True},
        )
        assert answer.status_code == 503

        recorded = client.get("/_fake/requests").json()
        assert [(r["path"], r["model"]) for r in recorded] == [
            ("/openai/v1/chat/completions", "gpt-4o")
        ]
        client.post("/_fake/reset")
        assert client.get("/_fake/requests").json() == []


def test_header_controls_and_byte_exact_framing(fake_provider):
    with httpx.Client(base_url=fake_provider.url) as client:
        answer = client.post(
            "/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            headers={"x-goog-api-key": "k", "x-fake-tokens": "2"},
            json={"contents": []},
        )
    assert answer.headers["content-type"] == "text/event-stream"
    assert answer.content.startswith(b'data: {"candidates": [')
    assert answer.content.count(b"\r\n\r\n") == 2
    assert b'"finishReason": "STOP"' in answer.content


def test_a_missing_key_gets_the_vendors_401(fake_provider):
    with httpx.Client(base_url=fake_provider.url) as client:
        answer = client.post("/anthropic/v1/messages", json={"model": "claude", "max_tokens": 5})
    assert answer.status_code == 401
    assert answer.json()["error"]["type"] == "authentication_error"


def test_scenarios_match_vendor_and_model_in_order(fake_provider):
    fake_provider.script("openai", model="gpt-4o", status=500)
    fake_provider.script("openai", status=429, times=2)
    with httpx.Client(base_url=fake_provider.url, headers={"authorization": "Bearer k"}) as client:

        def status(model: str) -> int:
            body = {"model": model, "messages": [], "stream": True}
            return client.post("/openai/v1/chat/completions", json=body).status_code

        assert [status("gpt-4o-mini"), status("gpt-4o"), status("gpt-4o"), status("gpt-4o")] == [
            429,
            500,
            429,
            200,
        ]


@pytest.mark.parametrize("provider_id", list(registry.ADAPTERS)[1:])
async def test_provider_settings_drive_every_registered_adapter(
    provider_id, fake_provider, settings
):
    settings.LLM_PROVIDERS = fake_provider.provider_settings()
    registry.reset()
    provider = registry.get_provider(provider_id)
    try:
        events = await collect(provider.stream(chat("some-model~tokens=3")))
    finally:
        await provider.aclose()
        registry.reset()

    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Hello from the"
    assert isinstance(events[-1], Finish)


def test_env_lines_cover_every_provider():
    lines = env_lines("http://127.0.0.1:9")
    assert "OPENAI_COMPAT_BASE_URL=http://127.0.0.1:9/compat/v1" in lines
    assert "GEMINI_BASE_URL=http://127.0.0.1:9/gemini/v1beta" in lines
    assert len(lines) == 12


def _exchange(sock, request: bytes) -> bytes:
    """Send one request on a raw socket and read its whole chunked response."""
    sock.sendall(request)
    data = b""
    while not data.endswith(b"0\r\n\r\n"):
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection after {data[-200:]!r}"
        data += chunk
    return data


def _stream_request(connection: str = "keep-alive") -> bytes:
    body = b'{"model": "gpt-4o", "messages": [], "stream": true}'
    return (
        b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: fake\r\n"
        b"Authorization: Bearer k\r\nContent-Type: application/json\r\n"
        b"Connection: %s\r\nContent-Length: %d\r\n\r\n%s" % (connection.encode(), len(body), body)
    )


def test_connections_are_kept_alive_between_requests(fake_provider):
    import socket
    from urllib.parse import urlsplit

    address = urlsplit(fake_provider.url)
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        first = _exchange(sock, _stream_request())
        assert b"Connection: keep-alive" in first
        second = _exchange(sock, _stream_request("close"))  # the same connection
        assert b"Connection: close" in second
        assert b"data: [DONE]" in second
        assert sock.recv(1) == b""  # and closed after the one that asked for it
    assert len(fake_provider.requests) == 2


def test_a_broken_response_closes_its_connection(fake_provider):
    import socket
    from urllib.parse import urlsplit

    fake_provider.script("openai", fault="reset")
    address = urlsplit(fake_provider.url)
    with socket.create_connection((address.hostname, address.port), timeout=5) as sock:
        sock.sendall(_stream_request())
        # The connection ends (reset or closed); kept open, recv would time out instead.
        try:
            while sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
