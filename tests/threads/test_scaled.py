"""Two daphne instances sharing PostgreSQL and Redis, as the scaled mode runs them."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.db import connection

from tests.factories import make_api_key, make_org, make_thread

pytestmark = [
    pytest.mark.services,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not (os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL")),
        reason="needs DATABASE_URL and REDIS_URL (the second test run sets them)",
    ),
]

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def instances():
    """Start two daphne processes on the test database; yield their base URLs."""
    db = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}",
        "DEMO_TTFT_MS": "50",
        "DEMO_TOKENS_PER_S": "20",
        # One reply at a time across both instances: the second must queue.
        "LLM_LIMITS": "demo:demo-chat=1/-",
        "LLM_LIMITS_PREFIX": f"test-scaled-{os.getpid()}",
        "LLM_QUEUE_POLL_S": "0.05",
    }
    daphne = str(Path(sys.executable).with_name("daphne"))
    ports = [free_port(), free_port()]
    procs = [
        subprocess.Popen(
            [daphne, "-b", "127.0.0.1", "-p", str(port), "chatproject.asgi:application"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for port in ports
    ]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        for url, proc in zip(urls, procs, strict=True):
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
                try:
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, f"{url} did not start"
                time.sleep(0.1)  # polling a starting server, not waiting for an event
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)


async def events(response: httpx.Response) -> AsyncIterator[tuple[str, dict]]:
    name = None
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: ") and name:
            yield name, json.loads(line[6:])


async def test_a_stream_started_on_one_instance_is_watched_and_cancelled_on_the_other(instances):
    org = await sync_to_async(make_org)("acme")
    key = await sync_to_async(make_api_key)(org)
    thread = await sync_to_async(make_thread)(org)
    headers = {"Authorization": f"Bearer {key}"}
    body = {"content": "Hello", "provider": "demo", "model": "demo-chat", "client_id": "one"}
    path = f"/api/threads/{thread.code}/messages/stream"
    first, second = instances
    async with (
        httpx.AsyncClient(timeout=30, headers=headers) as client,
        client.stream("POST", first + path, json=body) as on_first,
    ):
        seen_first = events(on_first)
        async for name, _data in seen_first:
            if name == "delta":
                break
        # The same client_id on the other instance attaches to the running reply.
        async with client.stream("POST", second + path, json=body) as on_second:
            seen_second = events(on_second)
            async for name, data in seen_second:
                if name == "delta":
                    assert data["text"].startswith("You")
                    break
            cancel = await client.post(f"{second}/api/messages/{await _reply_id(thread)}/cancel")
            assert cancel.json()["status"] == "cancelled"
            last_second = [data async for name, data in seen_second if name == "done"]
        last_first = [data async for name, data in seen_first if name == "done"]
    assert last_first[0]["status"] == "cancelled" and last_second[0]["status"] == "cancelled"


async def _reply_id(thread) -> str:
    from threads.models import Message

    reply = await Message.objects.filter(thread=thread, role="assistant").alast()
    return str(reply.code)


async def test_a_shared_limit_holds_across_instances(instances):
    org = await sync_to_async(make_org)("acme")
    key = await sync_to_async(make_api_key)(org)
    threads = [await sync_to_async(make_thread)(org) for _ in range(2)]
    headers = {"Authorization": f"Bearer {key}"}

    async def run(url: str, thread) -> list[tuple[str, dict]]:
        async with httpx.AsyncClient(timeout=60, headers=headers) as client:
            body = {"content": "Hello", "provider": "demo", "model": "demo-chat"}
            async with client.stream(
                "POST", f"{url}/api/threads/{thread.code}/messages/stream", json=body
            ) as response:
                return [item async for item in events(response)]

    results = await asyncio.gather(run(instances[0], threads[0]), run(instances[1], threads[1]))
    queued = [
        data
        for result in results
        for name, data in result
        if name == "status" and data["state"] == "queued"
    ]
    assert queued, "with a concurrency of 1, one of the two replies must have queued"
    for result in results:
        assert result[-1][0] == "done", result[-3:]
        assert result[-1][1]["status"] == "complete"
