from __future__ import annotations

import asyncio
import os
import uuid

import pytest

from providers.limits import (
    Limit,
    Limiter,
    LocalLimiter,
    QueueTimeout,
    RedisLimiter,
    limits_for,
    queue_detail,
)

ONE_AT_A_TIME = (Limit("openai", concurrency=1),)


class Client:
    """Takes a slot in a task; reports positions and the grant on a queue; holds it until told."""

    def __init__(self, limiter: Limiter, name: str, limits=ONE_AT_A_TIME, max_wait_s=5.0):
        self.name = name
        self.events: asyncio.Queue = asyncio.Queue()
        self.positions: list[int] = []
        self.done = asyncio.Event()
        self.task = asyncio.create_task(self._run(limiter, limits, max_wait_s))

    async def _run(self, limiter, limits, max_wait_s):
        try:
            async with limiter.slot("openai:gpt-4o-mini", limits, max_wait_s=max_wait_s) as slot:
                async for position in slot:
                    self.positions.append(position)
                    await self.events.put(("queued", position))
                await self.events.put(("granted", None))
                await self.done.wait()
        except QueueTimeout as exc:
            await self.events.put(("timeout", exc))

    async def next(self):
        return await asyncio.wait_for(self.events.get(), 5)

    async def finish(self):
        self.done.set()
        await self.task


async def test_it_grants_at_once_under_the_limit():
    limiter = LocalLimiter()
    a = Client(limiter, "a")
    assert await a.next() == ("granted", None)
    assert a.positions == []
    assert limiter.active("openai") == 1
    await a.finish()
    assert limiter.active("openai") == 0


async def test_it_queues_in_fifo_order_and_reports_positions():
    limiter = LocalLimiter()
    a = Client(limiter, "a")
    assert await a.next() == ("granted", None)
    b = Client(limiter, "b")
    assert await b.next() == ("queued", 1)
    c = Client(limiter, "c")
    assert await c.next() == ("queued", 2)

    await a.finish()
    assert await b.next() == ("granted", None)
    assert await c.next() == ("queued", 1)  # moved up a place

    await b.finish()
    assert await c.next() == ("granted", None)
    await c.finish()
    assert c.positions == [2, 1]


async def test_waiting_is_bounded():
    limiter = LocalLimiter()
    a = Client(limiter, "a")
    await a.next()
    b = Client(limiter, "b", max_wait_s=0.05)
    assert await b.next() == ("queued", 1)
    kind, exc = await b.next()
    assert kind == "timeout"
    assert exc.code == "queue_timeout"
    assert "busy" in exc.message
    assert limiter.waiting("openai:gpt-4o-mini") == 0
    await a.finish()


async def test_cancelling_while_queued_leaves_the_queue_at_once():
    limiter = LocalLimiter()
    a = Client(limiter, "a")
    await a.next()
    b = Client(limiter, "b")
    assert await b.next() == ("queued", 1)
    c = Client(limiter, "c")
    assert await c.next() == ("queued", 2)

    b.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await b.task
    assert limiter.waiting("openai:gpt-4o-mini") == 1
    assert await c.next() == ("queued", 1)

    await a.finish()
    assert await c.next() == ("granted", None)
    await c.finish()
    assert limiter.active("openai") == 0


async def test_a_provider_limit_is_shared_by_its_models():
    limiter = LocalLimiter()
    shared = Limit("openai", concurrency=2)
    slots = []
    for model in ("gpt-4o", "gpt-4o-mini"):
        slot = limiter.slot(f"openai:{model}", (shared,), max_wait_s=1)
        assert [p async for p in slot] == []
        slots.append(slot)
    third = limiter.slot("openai:gpt-4.1", (shared,), max_wait_s=1)
    assert await anext(third) == 1
    await slots[0].release()
    assert [p async for p in third] == []
    assert third.granted
    for slot in (slots[1], third):
        await slot.release()
    assert limiter.active("openai") == 0


async def test_requests_per_minute():
    limiter = LocalLimiter(window_s=0.2)
    per_minute = (Limit("gemini:gemini-2.5-flash", rpm=2),)
    for _ in range(2):
        async with limiter.slot("gemini:gemini-2.5-flash", per_minute, max_wait_s=1) as slot:
            assert [p async for p in slot] == []
    third = Client(limiter, "c", limits=per_minute)
    assert await third.next() == ("queued", 1)
    # Freed when the first grant leaves the (shortened) window.
    assert await third.next() == ("granted", None)
    await third.finish()


async def test_a_pause_holds_new_grants_back():
    limiter = LocalLimiter()
    await limiter.pause("openai", 0.1)
    client = Client(limiter, "a")
    assert await client.next() == ("queued", 1)
    assert await client.next() == ("granted", None)
    await client.finish()


def test_limits_come_from_settings_then_the_catalog(settings):
    from providers.catalog import ModelInfo

    info = ModelInfo("openrouter", "deepseek/deepseek-r1:free", "R1", rpm=20)
    assert limits_for(info) == (Limit("openrouter:deepseek/deepseek-r1:free", None, 20),)
    settings.LLM_LIMITS = {
        "openrouter": (8, None),
        "openrouter:deepseek/deepseek-r1:free": (1, 10),
    }
    assert limits_for(info) == (
        Limit("openrouter", 8, None),
        Limit("openrouter:deepseek/deepseek-r1:free", 1, 10),
    )
    # The model is always named (a 429 pauses it), even without limits of its own.
    assert limits_for(ModelInfo("demo", "demo-chat", "Demo")) == (Limit("demo:demo-chat"),)


def test_queue_detail_reads_well():
    assert queue_detail(1) == "Hold on: you are next in line"
    assert queue_detail(3) == "Hold on: you are 3rd in line"
    assert queue_detail(12) == "Hold on: you are 12th in line"


# --- Redis -----------------------------------------------------------------------------------

redis_only = pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="REDIS_URL is not set")


@pytest.fixture
async def redis_limiters():
    """Two limiters with their own connections, as two server instances would have."""
    prefix = f"test-limits-{uuid.uuid4().hex}"
    made = []

    def make(**kwargs):
        kwargs.setdefault("poll_s", 0.02)
        limiter = RedisLimiter.from_url(os.environ["REDIS_URL"], prefix=prefix, **kwargs)
        made.append(limiter)
        return limiter

    yield make
    cleanup = made[0].redis if made else None
    if cleanup is not None:
        keys = [k async for k in cleanup.scan_iter(match=f"{prefix}:*")]
        if keys:
            await cleanup.delete(*keys)
    for limiter in made:
        await limiter.aclose()


@redis_only
async def test_redis_limits_are_shared_between_instances(redis_limiters):
    one, two = redis_limiters(), redis_limiters()
    a = Client(one, "a")
    assert await a.next() == ("granted", None)
    b = Client(two, "b")
    assert await b.next() == ("queued", 1)
    c = Client(one, "c")
    assert await c.next() == ("queued", 2)

    await a.finish()
    assert await b.next() == ("granted", None)
    assert await c.next() == ("queued", 1)
    await b.finish()
    assert await c.next() == ("granted", None)
    await c.finish()


@redis_only
async def test_redis_cancel_while_queued_leaves_the_queue(redis_limiters):
    one, two = redis_limiters(), redis_limiters()
    a = Client(one, "a")
    await a.next()
    b = Client(two, "b")
    assert await b.next() == ("queued", 1)
    b.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await b.task
    assert await one.redis.zcard(one.key("q", "openai:gpt-4o-mini")) == 0
    await a.finish()


@redis_only
async def test_redis_waiting_is_bounded(redis_limiters):
    one = redis_limiters()
    a = Client(one, "a")
    await a.next()
    b = Client(one, "b", max_wait_s=0.1)
    assert await b.next() == ("queued", 1)
    kind, exc = await b.next()
    assert (kind, exc.code) == ("timeout", "queue_timeout")
    await a.finish()


@redis_only
async def test_a_dead_holder_loses_its_slot_when_the_lease_expires(redis_limiters):
    dead, alive = redis_limiters(lease_s=0.3), redis_limiters(lease_s=0.3)
    slot = dead.slot("openai:gpt-4o-mini", ONE_AT_A_TIME, max_wait_s=1)
    assert [p async for p in slot] == []
    slot._renewer.cancel()  # the process died: nobody renews or releases

    b = Client(alive, "b")
    assert await b.next() == ("queued", 1)
    assert await b.next() == ("granted", None)
    await b.finish()


@redis_only
async def test_redis_requests_per_minute(redis_limiters):
    one, two = redis_limiters(window_s=0.3), redis_limiters(window_s=0.3)
    per_minute = (Limit("gemini:gemini-2.5-flash", rpm=2),)
    for limiter in (one, two):
        async with limiter.slot("gemini:gemini-2.5-flash", per_minute, max_wait_s=1) as slot:
            assert [p async for p in slot] == []
    third = Client(one, "c", limits=per_minute)
    assert await third.next() == ("queued", 1)
    assert await third.next() == ("granted", None)
    await third.finish()


async def test_it_falls_back_to_in_process_limits_when_redis_is_down():
    limiter = RedisLimiter.from_url("redis://127.0.0.1:1/0", poll_s=0.01)
    try:
        a = Client(limiter, "a")
        assert await a.next() == ("granted", None)
        b = Client(limiter, "b")
        assert await b.next() == ("queued", 1)
        await a.finish()
        assert await b.next() == ("granted", None)
        await b.finish()
    finally:
        await limiter.aclose()


@redis_only
async def test_a_slot_under_no_limit_holds_nothing_to_release(redis_limiters, monkeypatch):
    """Most models have no limit: their slot only checks the model's pause and the queue, and
    once granted leaves nothing in Redis, so its release costs no round trip."""
    one = redis_limiters()
    model = "openai:gpt-4o-mini"
    slot = one.slot(model, (Limit(model),), max_wait_s=1)
    assert [p async for p in slot] == []
    assert slot._renewer is None
    assert await one.redis.exists(one.key("c", model), one.key("r", model)) == 0
    assert await one.redis.zcard(one.key("q", model)) == 0

    def no_round_trip(*args, **kwargs):
        raise AssertionError("released through Redis")

    monkeypatch.setattr(one.redis, "pipeline", no_round_trip)
    await slot.release()


@redis_only
async def test_a_pause_holds_back_a_slot_under_no_limit_too(redis_limiters):
    one, two = redis_limiters(), redis_limiters()
    model = "openai:gpt-4o-mini"
    await one.pause(model, 0.3)
    waiting = Client(two, "a", limits=(Limit(model),))
    assert await waiting.next() == ("queued", 1)
    assert await waiting.next() == ("granted", None)
    await waiting.finish()
