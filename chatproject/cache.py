"""Django's Redis cache with one client and one connection pool per process.

Django builds a cache backend per thread and per async context (`caches` is local to
each), so under ASGI every request got a new `RedisCache`, a new connection pool and a new
TCP connection: a connect and a health check for each session read. Here the pools live at
module level, one per server URL and option set, and every backend instance in the process
shares them (redis-py's pools are thread-safe and make new connections after a fork).

The client object Django wraps around them (`RedisCacheClient`: the serializer, the parser
class, the driver info) is shared the same way: it holds no per-call state, and building
one per context cost about 0.5 ms of CPU for each reply's one cache write, half of it.
So is the redis-py client it makes for every command (`get_client`): a `redis.Redis` takes
a connection from its pool only while a command runs, so one per pool serves every thread,
and building it cost about a third of that write's CPU (redis-py documents clients as safe
to share between threads).
"""

from __future__ import annotations

import threading
from typing import Any

from django.core.cache.backends.redis import RedisCache, RedisCacheClient
from django.utils.functional import cached_property

_pools: dict[tuple[str, str], Any] = {}
_clients: dict[tuple[tuple[str, ...], str], RedisCacheClient] = {}
_redis_clients: dict[int, Any] = {}  # id(pool) -> the redis.Redis on it (pools live forever)
_lock = threading.Lock()


def _options_key(options: dict[str, Any]) -> str:
    return repr(sorted(options.items(), key=str))


class SharedPoolClient(RedisCacheClient):
    def _get_connection_pool(self, write: bool) -> Any:
        index = self._get_connection_pool_index(write)
        key = (self._servers[index], _options_key(self._pool_options))
        pool = _pools.get(key)
        if pool is None:
            with _lock:
                pool = _pools.get(key)
                if pool is None:
                    pool = self._pool_class.from_url(self._servers[index], **self._pool_options)
                    _pools[key] = pool
        return pool

    def get_client(self, key: Any = None, *, write: bool = False) -> Any:
        pool = self._get_connection_pool(write)
        client = _redis_clients.get(id(pool))
        if client is None:
            with _lock:
                client = _redis_clients.get(id(pool))
                if client is None:
                    client = _redis_clients[id(pool)] = self._client(connection_pool=pool)
        return client


class SharedPoolRedisCache(RedisCache):
    def __init__(self, server: str, params: dict[str, Any]) -> None:
        super().__init__(server, params)
        self._class = SharedPoolClient

    @cached_property
    def _cache(self) -> RedisCacheClient:
        key = (tuple(self._servers), _options_key(self._options))
        client = _clients.get(key)
        if client is None:
            with _lock:
                client = _clients.get(key)
                if client is None:
                    client = _clients[key] = self._class(self._servers, **self._options)
        return client
