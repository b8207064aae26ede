from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator

from chatproject.asgi import application
from providers.demo import demo_reply
from tests.factories import make_org, make_thread, make_user
from threads import replies
from threads.models import Message, add_exchange
from threads.rendering import render_markdown
from threads.routing import websocket_urlpatterns

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture
async def acme(generations):
    org = await sync_to_async(make_org)("acme")
    user = await sync_to_async(make_user)("alice", org)
    thread = await sync_to_async(make_thread)(org, user)
    return org, user, thread


async def connect(user, thread) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(
        URLRouter(websocket_urlpatterns), f"/ws/threads/{thread.code}/"
    )
    communicator.scope["user"] = user
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def start_reply(thread, content="Hello") -> Message:
    _, reply, _ = await sync_to_async(add_exchange)(
        thread, content=content, provider="demo", model="demo-chat"
    )
    reply = await Message.objects.select_related("thread").aget(pk=reply.pk)
    replies.start(reply)
    return reply


def final(reply: Message, status: str = "complete") -> str:
    return f'id="msg-{reply.code}" class="msg msg-assistant" data-status="{status}"'


async def receive_until(communicator, needle: str, within_s: float = 15) -> list[str]:
    """Frames up to the first that contains `needle`; fails after `within_s` seconds."""
    frames: list[str] = []

    async def collect() -> list[str]:
        while True:
            frame = await communicator.receive_from(timeout=within_s)
            frames.append(frame)
            if needle in frame:
                return frames

    try:
        return await asyncio.wait_for(collect(), within_s)
    except TimeoutError:
        raise AssertionError(f"{needle!r} never came; got {len(frames)} frames") from None


async def test_it_rejects_anonymous(acme):
    from django.contrib.auth.models import AnonymousUser

    _, _, thread = acme
    communicator = WebsocketCommunicator(
        URLRouter(websocket_urlpatterns), f"/ws/threads/{thread.code}/"
    )
    communicator.scope["user"] = AnonymousUser()
    connected, _ = await communicator.connect()
    assert not connected


async def test_it_rejects_another_orgs_member(acme):
    _, _, thread = acme
    globex = await sync_to_async(make_org)("globex")
    mallory = await sync_to_async(make_user)("mallory", globex)
    communicator = WebsocketCommunicator(
        URLRouter(websocket_urlpatterns), f"/ws/threads/{thread.code}/"
    )
    communicator.scope["user"] = mallory
    connected, _ = await communicator.connect()
    assert not connected


async def test_it_rejects_a_foreign_origin(acme):
    _, _, thread = acme
    communicator = WebsocketCommunicator(
        application, f"/ws/threads/{thread.code}/", headers=[(b"origin", b"https://evil.example")]
    )
    connected, _ = await communicator.connect()
    assert not connected


async def test_it_streams_tokens_as_out_of_band_fragments(acme):
    _, user, thread = acme
    communicator = await connect(user, thread)
    reply = await start_reply(thread)
    frames = await receive_until(communicator, final(reply))
    # A turn started elsewhere is appended whole, then deltas go into its body.
    assert 'hx-swap-oob="beforeend:#message-list"' in frames[0]
    assert f'id="msg-{reply.code}"' in frames[0]
    deltas = [f for f in frames if f'id="body-{reply.code}" hx-swap-oob="beforeend"' in f]
    assert deltas, frames
    saved = await Message.objects.aget(pk=reply.pk)
    # The final frame swaps in the whole reply as sanitised Markdown.
    assert render_markdown(saved.content) in frames[-1]
    assert 'hx-swap-oob="outerHTML"' in frames[-1]
    await communicator.disconnect()


async def test_model_output_is_escaped(acme, settings):
    _, user, thread = acme
    communicator = await connect(user, thread)
    reply = await start_reply(thread, content="<script>alert(1)</script>")
    frames = await receive_until(communicator, final(reply))
    assert all("<script>alert(1)</script>" not in f for f in frames)
    assert any("&lt;script&gt;alert(1)&lt;/script&gt;" in f for f in frames)
    await communicator.disconnect()


async def test_a_second_connection_mid_stream_sees_the_text_so_far(acme, slow_demo):
    _, user, thread = acme
    first = await connect(user, thread)
    reply = await start_reply(thread)
    await receive_until(first, f'id="body-{reply.code}" hx-swap-oob="beforeend"')
    await receive_until(first, f'id="body-{reply.code}" hx-swap-oob="beforeend"')

    second = await connect(user, thread)
    snapshot = await second.receive_from(timeout=5)
    assert 'hx-swap-oob="outerHTML"' in snapshot and 'data-status="streaming"' in snapshot
    assert "You said" in snapshot  # the text streamed before this socket connected
    frames = await receive_until(second, final(reply))
    saved = await Message.objects.aget(pk=reply.pk)
    assert render_markdown(saved.content) in frames[-1]
    await first.disconnect()
    await second.disconnect()


async def test_cancel_keeps_the_partial_text(acme, slow_demo):
    _, user, thread = acme
    communicator = await connect(user, thread)
    reply = await start_reply(thread)
    await receive_until(communicator, f'id="body-{reply.code}" hx-swap-oob="beforeend"')
    status = await replies.cancel(reply)
    assert status == "cancelled"
    saved = await Message.objects.aget(pk=reply.pk)
    assert saved.status == "cancelled" and saved.finish_reason == "cancelled"
    full = "".join(demo_reply("Hello"))
    assert saved.content and full.startswith(saved.content)
    assert len(saved.content) < len(full)
    frames = await receive_until(communicator, final(reply, "cancelled"))
    assert "Stopped." in frames[-1]
    assert render_markdown(saved.content) in frames[-1]
    await communicator.disconnect()


async def test_a_reply_survives_its_socket_closing(acme, slow_demo):
    _, user, thread = acme
    communicator = await connect(user, thread)
    reply = await start_reply(thread)
    await receive_until(communicator, f'id="body-{reply.code}" hx-swap-oob="beforeend"')
    await communicator.disconnect()
    await replies.wait_all()
    saved = await Message.objects.aget(pk=reply.pk)
    assert saved.status == "complete" and saved.content.startswith("You said")


async def test_a_socket_in_this_process_gets_frames_without_the_layer(acme, slow_demo, monkeypatch):
    """A generation hands its frames to sockets of its own process directly. With Redis:
    channels_redis receives one message per round trip per process, which fell seconds
    behind at 50 sockets. In memory: the layer's consumer starts a task per message."""
    from channels.layers import get_channel_layer

    from threads.events import thread_group

    _, user, thread = acme
    communicator = await connect(user, thread)
    layer = get_channel_layer()
    published: list[str] = []
    real_group_send = layer.group_send

    async def spying_group_send(group, message):
        published.append(group)
        await real_group_send(group, message)

    monkeypatch.setattr(layer, "group_send", spying_group_send)
    reply = await start_reply(thread)
    frames = await receive_until(communicator, final(reply))
    deltas = [f for f in frames if f'id="body-{reply.code}" hx-swap-oob="beforeend"' in f]
    assert len(deltas) >= 5
    # Nothing (with Redis the sender waits for the group's size before its first publish).
    assert published.count(thread_group(thread.code)) == 0
    await communicator.disconnect()


async def test_a_listener_on_the_layer_gets_every_event_in_order(acme):
    """A listener on the layer (with Redis: a socket of another process), in the thread's
    group before the reply starts, gets it all; with Redis, the events before the group's
    size was known included."""
    from channels.layers import get_channel_layer

    from threads.events import thread_group

    _, _, thread = acme
    layer = get_channel_layer()
    elsewhere = await layer.new_channel()
    await layer.group_add(thread_group(thread.code), elsewhere)
    try:
        reply = await start_reply(thread)
        events = []
        while not events or events[-1]["event"] != "done":
            message = await asyncio.wait_for(layer.receive(elsewhere), 15)
            if message.get("message") == str(reply.code):
                events.append(message)
    finally:
        await layer.group_discard(thread_group(thread.code), elsewhere)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["event"] == "start"
    await replies.wait_all()


async def test_a_reply_of_this_process_ends_on_screen_exactly_as_its_saved_row_renders(acme):
    from threads.consumers import _render_message

    _, user, thread = acme
    communicator = await connect(user, thread)
    reply = await start_reply(thread)
    frames = await receive_until(communicator, final(reply))
    # The socket rendered the end from what the generation held, not from a read of the row.
    assert replies.held_row(str(reply.code)) is not None
    saved = await Message.objects.select_related("reply_to").aget(pk=reply.pk)
    assert frames[-1] == _render_message(saved, None, oob="outerHTML")
    await communicator.disconnect()


async def test_frames_reach_the_socket_without_a_thread_hop_each(acme):
    from unittest import mock

    # channels' dispatch would close old connections in a worker thread before every frame.
    _, user, thread = acme
    communicator = await connect(user, thread)
    with mock.patch("channels.consumer.aclose_old_connections") as hop:
        reply = await start_reply(thread)
        frames = await receive_until(communicator, final(reply))
    assert len(frames) > 3
    assert hop.call_count == 0
    await communicator.disconnect()


@pytest.mark.parametrize("name", ["delta", "reasoning"])
@pytest.mark.parametrize(
    "text", ["plain", "<script>alert('x')</script> & \"quotes\"", "naïve — 🙂\nnext line", ""]
)
def test_streamed_frames_match_their_template_partials(name, text):
    """Deltas and reasoning skip the template engine; the markup must stay the partials'."""
    from django.template.loader import render_to_string

    from threads.consumers import _render_event

    code = "3f2c7a1e-0000-4000-8000-000000000001"
    data = {"text": text}
    partial = render_to_string(
        f"threads/thread_detail.html#frame-{name}", {"code": code, "data": data}
    )
    assert _render_event(code, name, data) == partial
