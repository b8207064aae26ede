from __future__ import annotations

import json

import pytest
from asgiref.sync import sync_to_async

from tests.api_client import ApiClient
from tests.factories import make_api_key, make_org, make_thread
from threads.models import Message

pytestmark = [pytest.mark.django_db(transaction=True)]


def parse_sse(raw: bytes) -> list[tuple[int | None, str, dict]]:
    events = []
    for block in raw.decode().split("\n\n"):
        if not block.strip() or block.startswith(":"):
            continue
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append(
            (
                int(fields["id"]) if "id" in fields else None,
                fields["event"],
                json.loads(fields["data"]),
            )
        )
    return events


async def read_stream(response) -> bytes:
    chunks = [chunk async for chunk in response.streaming_content]
    return b"".join(chunks)


@pytest.fixture
async def api(generations):
    org = await sync_to_async(make_org)("acme")
    key = await sync_to_async(make_api_key)(org)
    thread = await sync_to_async(make_thread)(org)
    return ApiClient(key), thread


async def test_it_streams_a_reply_as_sse(api):
    client, thread = api
    response = await client.post(
        f"/api/threads/{thread.code}/messages/stream",
        {"content": "Hello there", "provider": "demo", "model": "demo-chat"},
    )
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "text/event-stream"
    events = parse_sse(await read_stream(response))
    names = [name for _, name, _ in events]
    assert names[0] == "start" and names[-1] == "done"
    assert "delta" in names
    ids = [i for i, _, _ in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    text = "".join(data["text"] for _, name, data in events if name == "delta")
    done = events[-1][2]
    assert done["status"] == "complete"
    assert done["finish_reason"] == "stop"
    assert done["usage"]["completion_tokens"] > 0
    assert done["cost_usd"] == "0"
    assert done["provider"] == "demo" and done["model"] == "demo-chat"
    saved = await Message.objects.aget(code=done["message_id"])
    assert saved.content == text
    assert text.startswith("You said: “Hello there”.")


async def test_a_reply_is_priced_when_the_catalog_cache_has_expired(api, settings):
    from providers import catalog

    settings.CATALOG_CACHE_TTL_S = 0
    catalog.clear_cache()
    client, thread = api
    response = await client.post(
        f"/api/threads/{thread.code}/messages/stream",
        {"content": "Hello", "provider": "demo", "model": "demo-chat"},
    )
    done = parse_sse(await read_stream(response))[-1][2]
    assert done["status"] == "complete" and done["cost_usd"] == "0"


async def test_done_is_last_even_when_following_the_reply_breaks(api, monkeypatch):
    from threads import replies

    follow = replies.follow

    async def breaking_follow(message, after_seq=0, keepalive_s=None):
        async for event in follow(message, after_seq, keepalive_s):
            yield event
            if event is not None and event["event"] == "delta":
                raise ConnectionError("the channel layer went away")

    monkeypatch.setattr(replies, "follow", breaking_follow)
    client, thread = api
    response = await client.post(
        f"/api/threads/{thread.code}/messages/stream",
        {"content": "Hello", "provider": "demo", "model": "demo-chat"},
    )
    events = parse_sse(await read_stream(response))
    assert [name for _, name, _ in events][-2:] == ["error", "done"]
    assert events[-2][2]["code"] == "stream_lost"
    ids = [i for i, _, _ in events]
    assert ids == sorted(set(ids))


async def test_a_quiet_stream_sends_keep_alive_comments(api, settings, monkeypatch):
    from threads import api as api_module

    monkeypatch.setattr(api_module, "KEEPALIVE_S", 0.02)
    settings.DEMO_TTFT_MS = 300  # quiet long enough for a few keep-alives before the text
    client, thread = api
    response = await client.post(
        f"/api/threads/{thread.code}/messages/stream",
        {"content": "Hello", "provider": "demo", "model": "demo-chat"},
    )
    raw = await read_stream(response)
    assert raw.count(b": keep-alive\n\n") >= 2
    assert [name for _, name, _ in parse_sse(raw)][-1] == "done"


async def test_keepalives_through_the_layer_path_fill_pauses_and_pass_errors_on():
    import asyncio

    from threads.replies import _with_keepalives

    release = asyncio.Event()

    async def slow_then_broken():
        yield {"event": "start"}
        await release.wait()
        yield {"event": "delta"}
        raise ConnectionError("layer gone")

    seen = []
    with pytest.raises(ConnectionError, match="layer gone"):
        async for event in _with_keepalives(slow_then_broken(), 0.01):
            seen.append(event if event is None else event["event"])
            if seen.count(None) == 2:
                release.set()
    assert seen[0] == "start" and seen[1:3] == [None, None] and seen[-1] == "delta"


async def test_a_follower_of_a_local_reply_gets_keepalives_in_its_pauses(api, settings):
    """While the provider is silent (here: its time to first token), a follower gets None
    after each keep-alive interval, then the reply's events in order."""
    from threads import replies
    from threads.models import add_exchange

    settings.DEMO_TTFT_MS = 300
    _, thread = api
    _, reply, _ = await sync_to_async(add_exchange)(
        thread, content="Hi", provider="demo", model="demo-chat"
    )
    reply = await Message.objects.select_related("thread").aget(pk=reply.pk)
    replies.start(reply)
    seen = [e if e is None else e["event"] async for e in replies.follow(reply, 0, 0.05)]

    first_delta = seen.index("delta")
    assert None in seen[:first_delta]  # a keep-alive before the first token
    events = [e for e in seen if e is not None]
    assert events[0] == "start" and events[-1] == "done"
