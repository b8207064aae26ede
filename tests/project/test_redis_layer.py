"""The Redis channel layer as configured (runs when REDIS_URL is set: the services pass)."""

from __future__ import annotations

import os

import pytest
from channels.layers import get_channel_layer

pytestmark = pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs REDIS_URL")


async def test_a_blocking_receive_outlasts_the_servers_block_timeout():
    """channels_redis receives with BZPOPMIN, which Redis holds for `brpop_timeout` seconds;
    a client read timeout at or under that (redis-py 8's default is 5 s, the same) crashed
    every idle WebSocket consumer."""
    layer = get_channel_layer()
    pool = layer.connection(0).connection_pool
    assert pool.connection_kwargs["socket_timeout"] > layer.brpop_timeout


async def test_the_layer_round_trips_a_group_message():
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add("probe", channel)
    await layer.group_send("probe", {"type": "probe.ping", "n": 1})
    assert await layer.receive(channel) == {"type": "probe.ping", "n": 1}
    await layer.group_discard("probe", channel)
