"""Concurrency and requests-per-minute limits, with a FIFO queue in front of them.

The policy wraps every provider attempt in a slot:

    async with limiter.slot(queue, limits, max_wait_s=30) as slot:
        async for position in slot:      # only while queued; 1 = next in line
            ...tell the user...
        ...make the request...           # the slot is held until the block ends

A slot waits in the queue's FIFO order until every limit it names has room. Waiting is
bounded (`QueueTimeout`); cancelling the task leaves the queue at once.

Two backends share that interface. `LocalLimiter` keeps counts in this process (asyncio).
`RedisLimiter` keeps them in Redis so every server instance shares them: each check-and-grant is
one Lua script (atomic), using Redis's clock, and held slots are leases that expire unless the
holder renews them, so a dead process cannot keep a slot. `get_limiter()` picks the backend
from `settings.REDIS_URL`.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import time
import uuid
import weakref
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from django.conf import settings

from .base import ErrorKind, ProviderError

if TYPE_CHECKING:
    from .catalog import ModelInfo

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Limit:
    """A limit shared by every request naming `key` ("openai" or "openai:gpt-4o")."""

    key: str
    concurrency: int | None = None
    rpm: int | None = None

    @property
    def bounded(self) -> bool:
        return self.concurrency is not None or self.rpm is not None


def limits_for(info: ModelInfo) -> tuple[Limit, ...]:
    """The provider's and the model's limits: settings first, then the catalog's defaults."""
    configured: dict[str, tuple[int | None, int | None]] = getattr(settings, "LLM_LIMITS", {})
    provider_key = info.provider
    model_key = f"{info.provider}:{info.id}"
    p_conc, p_rpm = configured.get(provider_key, (None, None))
    m_conc, m_rpm = configured.get(model_key, (info.concurrency, info.rpm))
    provider_limit = Limit(provider_key, p_conc, p_rpm)
    limits = (provider_limit,) if provider_limit.bounded else ()
    # The model's limit is always named, even when unbounded, so that a 429 can pause the
    # model for every request (see `Limiter.pause`).
    return (*limits, Limit(model_key, m_conc, m_rpm))


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


class QueueTimeout(ProviderError):
    """Waited in the queue for longer than allowed."""

    def __init__(self, queue: str, waited_s: float) -> None:
        provider, _, model = queue.partition(":")
        super().__init__(
            ErrorKind.RATE_LIMITED,
            f"{model or provider} is busy: waited {waited_s:.0f} s in line without a free slot. "
            "Try again in a minute or pick another model.",
            provider=provider,
            model=model,
            code="queue_timeout",
        )


class Slot(abc.ABC):
    """One request's place in a queue, then its hold on the limits."""

    def __init__(self, queue: str, limits: Sequence[Limit], max_wait_s: float) -> None:
        self.queue = queue
        self.limits = tuple(limits)
        self.max_wait_s = max_wait_s
        self.granted = False
        self.queued_s = 0.0
        self.position: int | None = None

    async def __aenter__(self) -> Slot:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Shielded so a cancelled task still gives its slot back.
        await asyncio.shield(self.release())

    def __aiter__(self) -> Slot:
        return self

    @abc.abstractmethod
    async def __anext__(self) -> int:
        """The current position while queued (only when it changes); stops once granted."""

    @abc.abstractmethod
    async def release(self) -> None:
        """Leave the queue or give the held slot back. Safe to call twice."""


class Limiter(abc.ABC):
    @abc.abstractmethod
    def slot(self, queue: str, limits: Sequence[Limit], *, max_wait_s: float) -> Slot: ...

    @abc.abstractmethod
    async def pause(self, key: str, seconds: float) -> None:
        """Hold back new grants on `key` (after a 429 with Retry-After)."""


# --- In-process ------------------------------------------------------------------------------


class LocalLimiter(Limiter):
    """Limits for one process and event loop."""

    def __init__(self, *, window_s: float = 60.0, clock: Callable[[], float] | None = None):
        self.window_s = window_s
        self.clock = clock or time.monotonic
        self._queues: dict[str, deque[LocalSlot]] = defaultdict(deque)
        self._active: dict[str, int] = defaultdict(int)
        self._grants: dict[str, deque[float]] = defaultdict(deque)
        self._paused: dict[str, float] = {}

    def slot(self, queue: str, limits: Sequence[Limit], *, max_wait_s: float) -> LocalSlot:
        return LocalSlot(self, queue, limits, max_wait_s)

    async def pause(self, key: str, seconds: float) -> None:
        until = self.clock() + seconds
        self._paused[key] = max(until, self._paused.get(key, 0.0))

    def active(self, key: str) -> int:
        return self._active[key]

    def waiting(self, queue: str) -> int:
        return len(self._queues[queue])

    def _wait_for(self, limit: Limit, now: float) -> float | None:
        """0 when `limit` has room now, seconds until it may have room, None if unknown."""
        grants = self._grants[limit.key]
        while grants and grants[0] <= now - self.window_s:
            grants.popleft()
        wait = max(0.0, self._paused.get(limit.key, 0.0) - now)
        if limit.rpm is not None and len(grants) >= limit.rpm:
            wait = max(wait, grants[0] + self.window_s - now)
        if limit.concurrency is not None and self._active[limit.key] >= limit.concurrency:
            return None  # until someone releases
        return wait

    def _try_grant(self, slot: LocalSlot) -> float | None:
        queue = self._queues[slot.queue]
        if not queue or queue[0] is not slot:
            return None
        now = self.clock()
        waits = [self._wait_for(limit, now) for limit in slot.limits]
        if any(w is None for w in waits):
            return None
        longest = max((w for w in waits if w is not None), default=0.0)
        if longest > 0:
            return longest
        queue.popleft()
        for limit in slot.limits:
            self._active[limit.key] += 1
            self._grants[limit.key].append(now)
        slot.granted = True
        self._wake()
        return 0.0

    def _leave(self, slot: LocalSlot) -> None:
        with contextlib.suppress(ValueError):
            self._queues[slot.queue].remove(slot)
        self._wake()

    def _release(self, slot: LocalSlot) -> None:
        for limit in slot.limits:
            self._active[limit.key] -= 1
        self._wake()

    def _wake(self) -> None:
        # Few waiters per process: waking all of them to re-check is simple and cheap.
        for queue in self._queues.values():
            for waiter in queue:
                waiter.event.set()


class LocalSlot(Slot):
    def __init__(
        self, limiter: LocalLimiter, queue: str, limits: Sequence[Limit], max_wait_s: float
    ) -> None:
        super().__init__(queue, limits, max_wait_s)
        self.limiter = limiter
        self.event = asyncio.Event()
        self._started: float | None = None
        self._released = False

    async def __anext__(self) -> int:
        limiter = self.limiter
        if self.granted or self._released:
            raise StopAsyncIteration
        if self._started is None:
            self._started = limiter.clock()
            limiter._queues[self.queue].append(self)
        while True:
            self.event.clear()
            wait = limiter._try_grant(self)
            now = limiter.clock()
            self.queued_s = now - self._started
            if wait == 0.0:
                raise StopAsyncIteration
            position = limiter._queues[self.queue].index(self) + 1
            if position != self.position:
                self.position = position
                return position
            left = self.max_wait_s - self.queued_s
            if left <= 0:
                await self.release()
                raise QueueTimeout(self.queue, self.queued_s)
            timeout = left if wait is None else min(left, wait)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.event.wait(), timeout)

    async def release(self) -> None:
        if self._released:
            return
        self._released = True
        if self.granted:
            self.limiter._release(self)
        elif self._started is not None:
            self.limiter._leave(self)


# --- Shared through Redis ----------------------------------------------------------------------

# KEYS: queue zset, queue-alive zset, seq counter, then (held, grants, pause) per limit.
# ARGV: slot id, alive ms, lease ms, window ms, limit count, then (concurrency, rpm) per limit
#       (-1 = no limit). Returns {granted, position, wait_ms}. A granted slot is recorded only
#       where a limit counts it: in `held` under a concurrency limit, in `grants` under an rpm
#       limit; so a slot granted under no concurrency limit holds nothing to release.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id = ARGV[1]
local alive_ms, lease_ms, window = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local n = tonumber(ARGV[5])
local keep = math.max(alive_ms, lease_ms, window) * 2
for _, dead in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  redis.call('ZREM', KEYS[1], dead)
  redis.call('ZREM', KEYS[2], dead)
end
if not redis.call('ZSCORE', KEYS[1], id) then
  redis.call('ZADD', KEYS[1], redis.call('INCR', KEYS[3]), id)
end
redis.call('ZADD', KEYS[2], now + alive_ms, id)
for _, k in ipairs({KEYS[1], KEYS[2], KEYS[3]}) do redis.call('PEXPIRE', k, keep) end
local rank = redis.call('ZRANK', KEYS[1], id)
if rank > 0 then return {0, rank + 1, 0} end
local blocked, wait_ms = false, 0
for i = 0, n - 1 do
  local held, grants, pause = KEYS[4 + 3 * i], KEYS[5 + 3 * i], KEYS[6 + 3 * i]
  local conc, rpm = tonumber(ARGV[6 + 2 * i]), tonumber(ARGV[7 + 2 * i])
  redis.call('ZREMRANGEBYSCORE', held, '-inf', now)
  redis.call('ZREMRANGEBYSCORE', grants, '-inf', now - window)
  local paused = tonumber(redis.call('GET', pause) or '0')
  if paused > now then blocked = true; wait_ms = math.max(wait_ms, paused - now) end
  if conc >= 0 and redis.call('ZCARD', held) >= conc then blocked = true end
  if rpm >= 0 and redis.call('ZCARD', grants) >= rpm then
    local oldest = redis.call('ZRANGE', grants, 0, 0, 'WITHSCORES')
    blocked = true
    wait_ms = math.max(wait_ms, tonumber(oldest[2]) + window - now)
  end
end
if blocked then return {0, 1, wait_ms} end
redis.call('ZREM', KEYS[1], id)
redis.call('ZREM', KEYS[2], id)
for i = 0, n - 1 do
  local held, grants = KEYS[4 + 3 * i], KEYS[5 + 3 * i]
  if tonumber(ARGV[6 + 2 * i]) >= 0 then
    redis.call('ZADD', held, now + lease_ms, id)
    redis.call('PEXPIRE', held, keep)
  end
  if tonumber(ARGV[7 + 2 * i]) >= 0 then
    redis.call('ZADD', grants, now, id)
    redis.call('PEXPIRE', grants, keep)
  end
end
return {1, 0, 0}
"""

# KEYS: held zsets. ARGV: slot id, lease ms. Extends the lease of a held slot.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, held in ipairs(KEYS) do
  redis.call('ZADD', held, 'XX', now + tonumber(ARGV[2]), ARGV[1])
end
return 1
"""

# KEYS: pause key. ARGV: ms. Never shortens an existing pause.
_PAUSE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local untl = now + tonumber(ARGV[1])
if untl > tonumber(redis.call('GET', KEYS[1]) or '0') then
  redis.call('SET', KEYS[1], untl, 'PX', tonumber(ARGV[1]))
end
return 1
"""


class RedisLimiter(Limiter):
    """Limits shared by every process that uses the same Redis and prefix."""

    def __init__(
        self,
        redis: Any,
        *,
        prefix: str = "llm-limits",
        window_s: float = 60.0,
        lease_s: float = 30.0,
        poll_s: float = 0.2,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.window_s = window_s
        self.lease_s = lease_s
        self.poll_s = poll_s
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._pause = redis.register_script(_PAUSE)
        self._fallback: LocalLimiter | None = None

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisLimiter:
        import redis.asyncio as aioredis

        return cls(aioredis.Redis.from_url(url), **kwargs)

    def key(self, kind: str, name: str) -> str:
        return f"{self.prefix}:{kind}:{name}"

    def slot(self, queue: str, limits: Sequence[Limit], *, max_wait_s: float) -> RedisSlot:
        return RedisSlot(self, queue, limits, max_wait_s)

    async def pause(self, key: str, seconds: float) -> None:
        from redis.exceptions import RedisError

        try:
            await self._pause(keys=[self.key("p", key)], args=[max(1, round(seconds * 1000))])
        except RedisError:
            logger.warning("Redis unavailable: could not pause %s", key, exc_info=True)

    def fallback(self) -> LocalLimiter:
        if self._fallback is None:
            self._fallback = LocalLimiter(window_s=self.window_s)
        return self._fallback

    async def aclose(self) -> None:
        await self.redis.aclose()


class RedisSlot(Slot):
    def __init__(
        self, limiter: RedisLimiter, queue: str, limits: Sequence[Limit], max_wait_s: float
    ) -> None:
        super().__init__(queue, limits, max_wait_s)
        self.limiter = limiter
        self.id = uuid.uuid4().hex
        self._started: float | None = None
        self._released = False
        self._renewer: asyncio.Task[None] | None = None
        self._local: LocalSlot | None = None  # when Redis is down

    def _keys(self) -> list[str]:
        lim = self.limiter
        keys = [lim.key("q", self.queue), lim.key("qa", self.queue), lim.key("seq", self.queue)]
        for limit in self.limits:
            keys += [lim.key("c", limit.key), lim.key("r", limit.key), lim.key("p", limit.key)]
        return keys

    def _args(self) -> list[int | str]:
        lim = self.limiter
        # A waiter that stops polling (dead process) drops out after a few missed polls.
        alive_ms = max(1000, round(lim.poll_s * 5000))
        args: list[int | str] = [
            self.id,
            alive_ms,
            round(lim.lease_s * 1000),
            round(lim.window_s * 1000),
            len(self.limits),
        ]
        for limit in self.limits:
            args += [
                -1 if limit.concurrency is None else limit.concurrency,
                -1 if limit.rpm is None else limit.rpm,
            ]
        return args

    async def __anext__(self) -> int:
        from redis.exceptions import RedisError

        if self._local is not None:
            try:
                return await self._local.__anext__()
            finally:
                self.granted = self._local.granted
                self.queued_s = self._local.queued_s
        if self.granted or self._released:
            raise StopAsyncIteration
        loop = asyncio.get_running_loop()
        if self._started is None:
            self._started = loop.time()
        while True:
            try:
                granted, position, wait_ms = await self.limiter._acquire(
                    keys=self._keys(), args=self._args()
                )
            except RedisError:
                logger.warning("Redis unavailable: limiting %s in-process", self.queue)
                self._local = self.limiter.fallback().slot(
                    self.queue, self.limits, max_wait_s=self.max_wait_s
                )
                return await self.__anext__()
            self.queued_s = loop.time() - self._started
            if granted:
                self.granted = True
                if self._holds():
                    self._renewer = asyncio.create_task(self._renew_lease())
                raise StopAsyncIteration
            if position != self.position:
                self.position = int(position)
                return self.position
            left = self.max_wait_s - self.queued_s
            if left <= 0:
                await self.release()
                raise QueueTimeout(self.queue, self.queued_s)
            pause = self.limiter.poll_s
            if wait_ms:
                pause = min(max(pause, int(wait_ms) / 1000), 1.0)
            await asyncio.sleep(min(pause, left))

    def _holds(self) -> bool:
        """Whether a granted slot is in a `held` set (a concurrency limit counts it)."""
        return any(limit.concurrency is not None for limit in self.limits)

    async def _renew_lease(self) -> None:
        lim = self.limiter
        held = [lim.key("c", limit.key) for limit in self.limits]
        while True:
            await asyncio.sleep(lim.lease_s / 3)
            with contextlib.suppress(Exception):
                await lim._renew(keys=held, args=[self.id, round(lim.lease_s * 1000)])

    async def release(self) -> None:
        from redis.exceptions import RedisError

        if self._released:
            return
        self._released = True
        if self._local is not None:
            await self._local.release()
            return
        if self._renewer is not None:
            self._renewer.cancel()
        if self._started is None or (self.granted and not self._holds()):
            return  # never asked, or granted without being held: nothing in Redis to remove
        lim = self.limiter
        try:
            async with lim.redis.pipeline(transaction=True) as pipe:
                pipe.zrem(lim.key("q", self.queue), self.id)
                pipe.zrem(lim.key("qa", self.queue), self.id)
                for limit in self.limits:
                    pipe.zrem(lim.key("c", limit.key), self.id)
                await pipe.execute()
        except RedisError:
            # The lease and the waiter's heartbeat expire on their own.
            logger.warning("Redis unavailable: slot %s left to expire", self.id)


# --- Choosing the backend -----------------------------------------------------------------------

_limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Limiter] = (
    weakref.WeakKeyDictionary()
)


def get_limiter() -> Limiter:
    """The limiter for this event loop: Redis-backed when REDIS_URL is set."""
    loop = asyncio.get_running_loop()
    limiter = _limiters.get(loop)
    if limiter is None:
        window = float(getattr(settings, "LLM_RPM_WINDOW_S", 60.0))
        if settings.REDIS_URL:
            limiter = RedisLimiter.from_url(
                settings.REDIS_URL,
                prefix=getattr(settings, "LLM_LIMITS_PREFIX", "llm-limits"),
                window_s=window,
                lease_s=float(getattr(settings, "LLM_SLOT_LEASE_S", 30.0)),
                poll_s=float(getattr(settings, "LLM_QUEUE_POLL_S", 0.2)),
            )
        else:
            limiter = LocalLimiter(window_s=window)
        _limiters[loop] = limiter
    return limiter


def queue_detail(position: int) -> str:
    if position <= 1:
        return "Hold on: you are next in line"
    return f"Hold on: you are {ordinal(position)} in line"


__all__ = [
    "Limit",
    "Limiter",
    "LocalLimiter",
    "QueueTimeout",
    "RedisLimiter",
    "Slot",
    "get_limiter",
    "limits_for",
    "queue_detail",
]
