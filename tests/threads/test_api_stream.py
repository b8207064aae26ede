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

    async def breaking_follow(message, after_seq=0):
        async for event in follow(message, after_seq):
            yield event
            if event["event"] == "delta":
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
