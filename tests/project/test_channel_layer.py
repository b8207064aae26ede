"""The embedded default's channel layer keeps Channels' in-memory semantics."""

from __future__ import annotations

import asyncio

import pytest
from channels.exceptions import ChannelFull

from chatproject.channel_layer import LocalChannelLayer


async def test_a_group_send_reaches_every_member_once_and_no_one_else():
    layer = LocalChannelLayer()
    a, b, outsider = [await layer.new_channel() for _ in range(3)]
    await layer.group_add("thread.1", a)
    await layer.group_add("thread.1", b)
    await layer.group_send("thread.1", {"type": "reply.event", "seq": 1})
    assert await layer.receive(a) == {"type": "reply.event", "seq": 1}
    assert await layer.receive(b) == {"type": "reply.event", "seq": 1}
    await layer.group_discard("thread.1", b)
    await layer.group_send("thread.1", {"type": "reply.event", "seq": 2})
    assert (await layer.receive(a))["seq"] == 2
    assert layer.channels.get(b) is None
    assert layer.channels.get(outsider) is None


async def test_each_receiver_gets_its_own_top_level_dict():
    layer = LocalChannelLayer()
    a, b = await layer.new_channel(), await layer.new_channel()
    for channel in (a, b):
        await layer.group_add("g", channel)
    await layer.group_send("g", {"type": "x", "n": 1})
    first = await layer.receive(a)
    first["n"] = 99
    assert (await layer.receive(b))["n"] == 1


async def test_messages_are_received_in_order():
    layer = LocalChannelLayer()
    channel = await layer.new_channel()
    await layer.group_add("g", channel)
    for seq in range(1, 6):
        await layer.group_send("g", {"type": "x", "seq": seq})
    assert [(await layer.receive(channel))["seq"] for _ in range(5)] == [1, 2, 3, 4, 5]


async def test_a_receiver_waiting_first_gets_the_message():
    layer = LocalChannelLayer()
    channel = await layer.new_channel()
    waiting = asyncio.create_task(layer.receive(channel))
    await asyncio.sleep(0)  # let the receiver start waiting
    await layer.send(channel, {"type": "hello"})
    assert await waiting == {"type": "hello"}


async def test_a_full_channel_raises_on_send_and_is_skipped_by_a_group_send():
    layer = LocalChannelLayer(capacity=2)
    channel = await layer.new_channel()
    await layer.group_add("g", channel)
    await layer.send(channel, {"type": "1"})
    await layer.send(channel, {"type": "2"})
    with pytest.raises(ChannelFull):
        await layer.send(channel, {"type": "3"})
    await layer.group_send("g", {"type": "4"})  # dropped for that member, no error
    assert [(await layer.receive(channel))["type"] for _ in range(2)] == ["1", "2"]


async def test_expired_messages_are_swept_and_their_channel_leaves_its_groups():
    layer = LocalChannelLayer(expiry=-1, sweep_interval=0)
    stale, fresh = await layer.new_channel(), await layer.new_channel()
    await layer.group_add("g", stale)
    await layer.send(stale, {"type": "old"})  # already past its expiry
    await layer.send(fresh, {"type": "other"})
    await layer.group_send("g", {"type": "sweep"})
    assert stale not in layer.groups.get("g", {})


async def test_sweeps_are_rate_limited():
    layer = LocalChannelLayer(expiry=-1, sweep_interval=3600)
    channel = await layer.new_channel()
    await layer.group_send("g", {"type": "first sweep happens here"})
    await layer.group_add("g", channel)
    await layer.send(channel, {"type": "old"})
    await layer.group_send("g", {"type": "no sweep within the interval"})
    assert channel in layer.groups["g"]
