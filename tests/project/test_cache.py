"""chatproject/cache.py: every Redis cache backend in the process shares one client and pool."""

from __future__ import annotations

import os
import threading

import pytest

from chatproject.cache import SharedPoolRedisCache

URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def test_backends_built_per_context_share_one_connection_pool():
    # Django builds a backend per thread and async context; each used to open its own pool.
    first = SharedPoolRedisCache(URL, {})
    pools = []
    thread = threading.Thread(
        target=lambda: pools.append(SharedPoolRedisCache(URL, {})._cache._get_connection_pool(True))
    )
    thread.start()
    thread.join()
    assert pools[0] is first._cache._get_connection_pool(True)
    other = SharedPoolRedisCache(URL.rsplit("/", 1)[0] + "/9", {})
    assert other._cache._get_connection_pool(True) is not pools[0]  # another database


def test_backends_built_per_context_share_one_client():
    # Building Django's client wrapper per context was half of a cache write's CPU.
    clients = []
    thread = threading.Thread(target=lambda: clients.append(SharedPoolRedisCache(URL, {})._cache))
    thread.start()
    thread.join()
    assert SharedPoolRedisCache(URL, {})._cache is clients[0]
    assert SharedPoolRedisCache(URL, {"OPTIONS": {"db": 3}})._cache is not clients[0]
    assert SharedPoolRedisCache(URL.rsplit("/", 1)[0] + "/9", {})._cache is not clients[0]


def test_commands_from_any_thread_share_one_redis_client_per_pool():
    # Django made a redis.Redis for every command: a third of a cache write's CPU.
    cache = SharedPoolRedisCache(URL, {})
    clients = []
    thread = threading.Thread(
        target=lambda: clients.append(SharedPoolRedisCache(URL, {})._cache.get_client(write=True))
    )
    thread.start()
    thread.join()
    assert cache._cache.get_client(write=True) is clients[0]
    assert clients[0].connection_pool is cache._cache._get_connection_pool(True)
    other = SharedPoolRedisCache(URL.rsplit("/", 1)[0] + "/9", {})
    assert other._cache.get_client(write=True) is not clients[0]


@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs Redis (REDIS_URL)")
def test_values_round_trip_through_redis_on_one_connection():
    url = URL.rsplit("/", 1)[0] + "/14"  # a pool no other test has used
    a, b = SharedPoolRedisCache(url, {}), SharedPoolRedisCache(url, {})
    a.set("test-shared-pool", {"n": 1}, 30)
    assert b.get("test-shared-pool") == {"n": 1}
    pool = a._cache._get_connection_pool(True)
    assert len(pool._available_connections) + len(pool._in_use_connections) == 1
    a.delete("test-shared-pool")
