"""Drives one reply from start to end, independent of any socket.

1. `start()` spawns a `Generation` as an asyncio task in the ASGI process.
2. The generation asks the provider policy for events. Cancels and snapshot requests reach
   it directly from this process, and from others (shared layer) through this process's
   control channel in the `reply-control` group (`_ControlChannel`).
3. Text deltas are coalesced into frames (the first at once, then at most one per
   STREAM_FRAME_INTERVAL_MS) and published to the thread group; every listener (WebSocket
   consumers, SSE responses, a blocking API call) renders them.
4. The message row is saved in batches (every STREAM_SAVE_INTERVAL_S while text flows, and
   at the end), never per token; the heartbeat rides on those saves and on a slow ticker.
5. At the end the buffered text goes out as a last delta, then `done`; the saved text is
   exactly the text that was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import copy
import dataclasses
import logging
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Iterable
from contextlib import aclosing
from decimal import Decimal
from typing import Any, cast

from asgiref.sync import sync_to_async
from channels.layers import BaseChannelLayer, InMemoryChannelLayer, get_channel_layer
from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from chatproject.db import Priority, database_sync_to_async
from providers import catalog, policy
from providers.base import (
    ChatRequest,
    Finish,
    ProviderError,
    ReasoningDelta,
    Role,
    Sources,
    TextDelta,
    Turn,
    Usage,
)
from providers.tokens import estimate_prompt_tokens, estimate_tokens
from telemetry import metrics
from telemetry.recorder import ReplyTimings, count_calls, record_attempts

from . import rows, send_reads
from .events import REPLY_EVENT, thread_group
from .models import Message, Thread

log = logging.getLogger(__name__)

# Strong references to running generations: asyncio keeps only weak ones.
_running: set[asyncio.Task[None]] = set()
# The generations this process runs, by message code: followers, cancels and snapshot
# requests in this process talk to them directly instead of through the channel layer.
_local: dict[str, Generation] = {}
# This process's WebSocket consumers, by thread group and channel name, so that generations
# here hand them their frames directly: without a Redis round trip on a shared layer
# (channels_redis receives one message per round trip per process, which fell seconds
# behind at 50 sockets), and without the in-memory layer's per-message task in the
# consumer. Events reach a socket's inbox in order; its consumer drains it.
_sockets: dict[str, dict[str, LocalSocket]] = {}
_socket_channels: dict[str, LocalSocket] = {}
# Reply rows as this process's generations hold them (the turn loaded; at `done`, as finally
# saved), kept for ROW_KEEP_S after each ends: sockets here render a reply's turn and its
# end from them instead of reading the row back, twice per reply per socket.
_rows: dict[str, Message] = {}
ROW_KEEP_S = 60.0


class LocalSocket:
    """A consumer's inbox for events from generations in this process."""

    def __init__(self, group: str, channel: str, handle: Any) -> None:
        self.group = group
        self.channel = channel
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.task = asyncio.create_task(self._drain(handle))

    async def _drain(self, handle: Any) -> None:
        while True:
            message = await self.inbox.get()
            try:
                await handle(message)
            except Exception:
                log.exception("a socket could not show a frame of reply %s", message.get("message"))


def attach_socket(group: str, channel: str, handle: Any) -> LocalSocket:
    """Register a consumer of `group` whose `handle(message)` takes reply messages."""
    socket = LocalSocket(group, channel, handle)
    _sockets.setdefault(group, {})[channel] = socket
    _socket_channels[channel] = socket
    return socket


def detach_socket(socket: LocalSocket | None) -> None:
    if socket is None:
        return
    socket.task.cancel()
    _socket_channels.pop(socket.channel, None)
    members = _sockets.get(socket.group, {})
    members.pop(socket.channel, None)
    if not members:
        _sockets.pop(socket.group, None)


class _Pauses:
    """Puts `marker` in `queue` after each `interval` seconds in which `seen()` was not
    called: keep-alives from one timer per pause, not a timeout around every wait."""

    def __init__(self, queue: asyncio.Queue[Any], interval: float, marker: Any) -> None:
        self.queue, self.interval, self.marker = queue, interval, marker
        self.loop = asyncio.get_running_loop()
        self.last = self.loop.time()
        self.timer = self.loop.call_later(interval, self._check)

    def seen(self) -> None:
        self.last = self.loop.time()

    def cancel(self) -> None:
        self.timer.cancel()

    def _check(self) -> None:
        quiet = self.loop.time() - self.last
        if quiet >= self.interval:
            self.queue.put_nowait(self.marker)
            self.last, quiet = self.loop.time(), 0.0
        self.timer = self.loop.call_later(self.interval - quiet, self._check)


# Put in a follower's queue by its `_Pauses` after keepalive_s without an event.
_PAUSE: dict[str, Any] = {"event": "pause"}

HEARTBEAT_S = 10.0
SNAPSHOT_TIMEOUT_S = 2.0
IDLE_PROBE_S = 30.0
CANCEL_WAIT_S = 3.0
EVENTS_CACHE_S = 15 * 60
# What the end of a reply writes to its row.
FINAL_FIELDS = [
    "status",
    "content",
    "reasoning",
    "sources",
    "error",
    "finish_reason",
    "chain",
    "provider",
    "model",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "reasoning_tokens",
    "tokens_estimated",
    "cost_usd",
    "priced",
    "vendor_cost_usd",
    "ttft_ms",
    "latency_ms",
    "finished",
    "updated",
    "heartbeat",
]


def _shared(layer: BaseChannelLayer) -> bool:
    """Whether other processes use this layer too (Redis), unlike the in-memory one."""
    return not isinstance(layer, InMemoryChannelLayer)


def _others_in_group(layer: BaseChannelLayer, group: str) -> bool:
    """Whether a group of the in-memory layer has members besides this process's sockets,
    which take their frames from their inboxes (other layers: assume so)."""
    groups = getattr(layer, "groups", None)
    if groups is None:
        return True
    return len(groups.get(group) or ()) > len(_sockets.get(group, {}))


async def _group_size(layer: BaseChannelLayer, group: str) -> int | None:
    """Members of a group of the Redis layer (None: a layer that cannot tell)."""
    group_key = getattr(layer, "_group_key", None)
    if group_key is None:
        return None
    connection = layer.connection(layer.consistent_hash(group))  # type: ignore[attr-defined]
    return int(await connection.zcard(group_key(group)))


def _layer() -> BaseChannelLayer:
    layer = get_channel_layer()
    assert layer is not None, "CHANNEL_LAYERS is not configured"
    return layer


def _events_cache_key(code: object) -> str:
    return f"reply-events:{code}"


def start(message: Message, request: ChatRequest | None = None) -> asyncio.Task[None]:
    """Start generating `message` (an assistant message in state queued) in this loop.

    `request` is `build_request(message)`, made by the caller in the same trip to the
    database that saved the message (with the thread and organisation loaded on `message`);
    without it the generation reads the row and builds it itself.
    """
    generation = Generation(message, request)
    # A fresh context: the request's (and its per-request thread executor, which Django
    # shuts down when the response ends) must not leak into a task that outlives it.
    task = asyncio.create_task(
        generation.run(), name=f"reply-{generation.code}", context=contextvars.Context()
    )
    _running.add(task)
    _local[generation.code] = generation
    _rows[generation.code] = message

    def forget(task: asyncio.Task[None]) -> None:
        _running.discard(task)
        if _local.get(generation.code) is generation:
            del _local[generation.code]
        with contextlib.suppress(RuntimeError):  # the loop is closing: nothing to keep
            task.get_loop().call_later(ROW_KEEP_S, _rows.pop, generation.code, None)

    task.add_done_callback(forget)
    return task


def held_row(code: str) -> Message | None:
    """A copy of reply `code`'s row as this process's generation of it holds it (its turn
    and thread loaded; once `done` is published, as finally saved), or None when another
    process generates it or it ended a while ago: then read the row."""
    row = _rows.get(code)
    return None if row is None else copy.copy(row)


def running_codes() -> set[str]:
    """Message codes of the replies this process is generating right now."""
    return {task.get_name().removeprefix("reply-") for task in list(_running)}


def settle_orphans(thread: Thread) -> None:
    """End this thread's replies that no process is generating any more (sync ORM).

    With one process (no REDIS_URL) a reply this process is not running is an orphan of a
    restart; with several, only the heartbeat can tell.
    """
    active = Message.objects.filter(thread=thread, status__in=Message.ACTIVE)
    active.reap_stale(settings.STREAM_STALE_AFTER_S)
    if not settings.REDIS_URL:
        active.exclude(code__in=running_codes()).interrupt()


async def wait_all() -> None:
    """Wait for every generation running in this event loop (tests, graceful shutdown)."""
    loop = asyncio.get_running_loop()
    # Skip finished tasks: awaiting an already-finished gather never yields to the loop, so
    # their done-callbacks (which drop them from _running) would never run.
    while mine := [t for t in _running if t.get_loop() is loop and not t.done()]:
        await asyncio.gather(*mine, return_exceptions=True)


def _save_active(pk: int, fields: dict[str, Any]) -> int:
    """Save fields of a reply that is still active (a finished row is never overwritten)."""
    return rows.update(Message, pk, fields, only_if_in={"status": Message.ACTIVE})


# Generations outlive requests: chatproject.db's database_sync_to_async runs this on the
# database threads and hands the connection back (to the pool) after each call. Partial
# saves and heartbeats are what nobody waits for: sends go before them.
_update_active = database_sync_to_async(_save_active, Priority.LATER)


def _load(pk: int) -> tuple[Message, ChatRequest]:
    message = Message.objects.select_related("thread__org", "reply_to").get(pk=pk)
    return message, build_request(message)


def build_request(message: Message) -> ChatRequest:
    """The whole conversation before `message`, partial replies included (sync ORM)."""
    return request_for(message, send_reads.history(message))


def request_after_turn(
    reply: Message, earlier: Iterable[tuple[str, str]] | None, turn: Message
) -> ChatRequest:
    """`build_request(reply)` for a reply to the person's `turn`. Given the conversation
    `earlier`, read before the turn was saved (with the send's own reads), it reads nothing
    more; given None, it reads the conversation (sync ORM)."""
    if earlier is None:
        return build_request(reply)
    # `earlier` is read as `history()` reads it (no empty messages); so is the turn.
    turn_read = [(turn.role, turn.content)] if turn.content else []
    return request_for(reply, [*earlier, *turn_read])


def request_for(message: Message, history: Iterable[tuple[str, str]]) -> ChatRequest:
    """The request for reply `message` after the conversation `history` ((role, content),
    oldest first, as `send_reads.history` reads it)."""
    thread = message.thread
    # The roles are Message.Role's values, "user" and "assistant", as Turn's are.
    turns = tuple(Turn(role=cast(Role, role), content=content) for role, content in history)
    system = thread.system_prompt or thread.org.system_prompt or settings.SYSTEM_PROMPT
    return ChatRequest(
        provider=message.requested_provider,
        model=message.requested_model,
        turns=turns,
        system=system,
        max_tokens=settings.LLM_MAX_TOKENS,
    )


def done_payload(message: Message) -> dict[str, Any]:
    return {
        "message_id": str(message.code),
        "status": message.status,
        "finish_reason": message.finish_reason or None,
        "usage": message.usage_dict(),
        "cost_usd": message.cost_str(),
        "priced": message.priced,
        "vendor_cost_usd": (
            None if message.vendor_cost_usd is None else str(message.vendor_cost_usd.normalize())
        ),
        "ttft_ms": message.ttft_ms,
        "latency_ms": message.latency_ms,
        "provider": message.provider or None,
        "model": message.model or None,
        "requested_provider": message.requested_provider,
        "requested_model": message.requested_model,
        "chain": message.chain,
        "error": message.error or None,
    }


def events_from_row(message: Message) -> list[dict[str, Any]]:
    """Events that rebuild a finished (or orphaned) reply from its saved row."""
    code = str(message.code)
    reply_to = message.reply_to.code if message.reply_to_id else None  # type: ignore[union-attr]
    out: list[dict[str, Any]] = [
        {
            "event": "start",
            "data": {
                "message_id": code,
                "user_message_id": str(reply_to) if reply_to else None,
                "provider": message.requested_provider,
                "model": message.requested_model,
            },
        }
    ]
    if message.reasoning:
        out.append({"event": "reasoning", "data": {"text": message.reasoning}})
    if message.content:
        out.append({"event": "delta", "data": {"text": message.content}})
    if message.sources:
        out.append({"event": "sources", "data": {"items": message.sources}})
    if message.status == Message.Status.FAILED:
        out.append({"event": "error", "data": {"code": "provider_error", "message": message.error}})
    if not message.is_active:
        out.append({"event": "done", "data": done_payload(message)})
    for seq, event in enumerate(out, start=1):
        event.update(type=REPLY_EVENT, message=code, seq=seq)
    return out


class Generation:
    def __init__(self, message: Message, request: ChatRequest | None = None) -> None:
        self.message = message
        self.message_pk = message.pk
        self.code = str(message.code)
        self.request = request
        self.layer = _layer()
        # Other processes (a shared layer) may follow or cancel this reply through the layer.
        self.remote = _shared(self.layer)
        self.seq = 0
        self.events: list[dict[str, Any]] = []
        self.listeners: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self.outbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.sent_text: list[str] = []
        self.sent_reasoning: list[str] = []
        self.pending_text: list[str] = []
        self.pending_reasoning: list[str] = []
        self.sources: list[dict[str, str]] = []
        self.usage: Usage | None = None
        self.finish_reason = ""
        self.answering: policy.Answering | None = None
        self.attempts: list[policy.Attempt] = []
        self.chain: list[str] = []
        self.warnings: list[str] = []
        self.queued = False
        self.continued_by = ""
        self.cancelled = False
        self.ended = False
        # Shared layer: whether the thread's group has members (None: not known, so publish),
        # known once `members_known` is set; and whether anyone asked for a snapshot (then it
        # listens there).
        self.group_members: bool | None = None
        self.members_known = asyncio.Event()
        self.asked = False
        self.control_channel = ""
        self.stream_task: asyncio.Task[tuple[str, str]] | None = None
        self.frame_interval = settings.STREAM_FRAME_INTERVAL_MS / 1000
        self.save_interval = settings.STREAM_SAVE_INTERVAL_S
        self.last_frame = 0.0
        # The first partial save comes one interval after the start, not at the first token:
        # a reply shorter than the interval is written once, at its end.
        self.last_save = time.perf_counter()
        self.flush_handle: asyncio.TimerHandle | None = None
        self.save_task: asyncio.Task[None] | None = None
        self.t0 = time.perf_counter()
        self.ttft_ms: int | None = None
        self.first_token_at: float | None = None
        self.first_frame_at: float | None = None

    # --- lifecycle ------------------------------------------------------------------------

    async def run(self) -> None:
        control: asyncio.Task[None] | None = None
        if self.request is None:
            if self.remote:
                # Listen first, so that a cancel from another process is either heard or,
                # if it came before, found in the durable flag read just after.
                await self._join_control_group()
            self.message, self.request = await database_sync_to_async(_load, Priority.REPLY)(
                self.message_pk
            )
            _rows[self.code] = self.message
            self.cancelled = self.message.cancel_requested
        # Otherwise the row was saved by this process just now and its code has not left it
        # yet: joining (the control task's first step) reaches Redis before any response
        # that could tell a client, and so another process, what to cancel; the stream need
        # not wait for it.
        self.group = thread_group(self.message.thread.code)
        if self.remote:
            control = asyncio.create_task(self._control_loop())
        sender = asyncio.create_task(self._send_loop())
        ticker = asyncio.create_task(self._heartbeat_loop())
        try:
            with metrics.track_stream():
                await self._drive(self.message)
        finally:
            self._leave_queue()
            ticker.cancel()
            if control is not None:
                control.cancel()
                await asyncio.gather(control, return_exceptions=True)
            self.outbox.put_nowait(None)
            # Followers in this process stop here even if `done` was never sent (shutdown).
            self.ended = True
            for queue in self.listeners:
                queue.put_nowait(None)
            await sender

    async def _drive(self, message: Message) -> None:
        try:
            self._emit(
                "start",
                {
                    "message_id": self.code,
                    "user_message_id": str(message.reply_to.code) if message.reply_to else None,
                    "provider": message.requested_provider,
                    "model": message.requested_model,
                },
            )
            if self.cancelled:
                status, error = Message.Status.CANCELLED, ""
            else:
                self.stream_task = asyncio.create_task(self._stream())
                status, error = await self.stream_task
            await self._finish(status, error)
        except Exception:
            log.exception("reply %s crashed", self.message_pk)
            await self._fail_safely()

    async def _stream(self) -> tuple[str, str]:
        """Run the provider policy; return (final status, error text)."""
        assert self.request is not None
        org = self.message.thread.org
        chain = await policy.default_chain(
            self.message.requested_provider, self.message.requested_model, org.fallback_list()
        )
        try:
            async for event in policy.run_chain(
                self.request, chain, self.attempts, continue_partial=org.continue_partial
            ):
                self._on_event(event)
        except asyncio.CancelledError:
            if not self.cancelled:
                raise
            return Message.Status.CANCELLED, ""
        except ProviderError as exc:
            self._emit("error", {"code": exc.code or exc.kind.value, "message": exc.message})
            return Message.Status.FAILED, exc.message
        return Message.Status.COMPLETE, ""

    def _on_event(self, event: object) -> None:
        if isinstance(event, TextDelta):
            if event.text:
                if self.first_token_at is None:
                    self.first_token_at = time.perf_counter()
                self.pending_text.append(event.text)
                self._frame()
        elif isinstance(event, ReasoningDelta):
            if event.text:
                self.pending_reasoning.append(event.text)
                self._frame()
        elif isinstance(event, Sources):
            self.sources = [{"title": s.title, "url": s.url, "date": s.date} for s in event.items]
            self._emit("sources", {"items": self.sources})
        elif isinstance(event, Usage):
            self.usage = event
        elif isinstance(event, Finish):
            self.finish_reason = event.reason.value
        elif isinstance(event, policy.Answering):
            self._leave_queue()
            self.answering = event
            self.chain.append(f"{event.provider}:{event.model}")
            if event.warning:
                self.warnings.append(event.warning)
            if event.continued:
                self.continued_by = event.display_name or event.model
        elif isinstance(event, policy.Status):
            if event.state == "queued" and not self.queued:
                self.queued = True
                metrics.queue_depth.inc()
            data = {k: v for k, v in dataclasses.asdict(event).items() if v is not None}
            self._emit("status", data)
            self._save_soon(status=Message.Status.WAITING)

    # --- frames -------------------------------------------------------------------------

    def _frame(self) -> None:
        """Send now if the last frame is old enough, else once the interval has passed."""
        now = time.perf_counter()
        if now - self.last_frame >= self.frame_interval:
            self._flush()
        elif self.flush_handle is None:
            delay = self.frame_interval - (now - self.last_frame)
            self.flush_handle = asyncio.get_running_loop().call_later(delay, self._flush)

    def _flush(self) -> None:
        if self.flush_handle is not None:
            self.flush_handle.cancel()
            self.flush_handle = None
        self.last_frame = time.perf_counter()
        if self.pending_reasoning:
            text = "".join(self.pending_reasoning)
            self.pending_reasoning.clear()
            self.sent_reasoning.append(text)
            self._emit("reasoning", {"text": text})
        if self.pending_text:
            text = "".join(self.pending_text)
            self.pending_text.clear()
            first = not self.sent_text
            self.sent_text.append(text)
            if first:
                self.ttft_ms = round((time.perf_counter() - self.t0) * 1000)
            self._emit("delta", {"text": text})
            self._save_soon(status=Message.Status.STREAMING)

    def _event(self, name: str, data: dict[str, Any]) -> dict[str, Any]:
        """The next event, not yet published (events are never changed once built)."""
        return {
            "type": REPLY_EVENT,
            "message": self.code,
            "seq": self.seq + 1,
            "event": name,
            "data": data,
        }

    def _emit(self, name: str, data: dict[str, Any]) -> None:
        self._publish(self._event(name, data))

    def _publish(self, event: dict[str, Any]) -> None:
        """Hand `event` to followers in this process at once, and to the thread's group
        (WebSocket consumers, other processes) when anyone there listens."""
        assert event["seq"] == self.seq + 1, "events are published in order"
        self.seq = event["seq"]
        self.events.append(event)
        for queue in self.listeners:
            queue.put_nowait(event)
        for socket in _sockets.get(self.group, {}).values():
            socket.inbox.put_nowait(event)
        if self.first_frame_at is None and event["event"] == "delta" and self.listeners:
            self.first_frame_at = time.perf_counter()
        if self._group_listens():
            self.outbox.put_nowait(event)

    def _group_listens(self) -> bool:
        if not self.remote:
            return _others_in_group(self.layer, self.group)
        return self.asked or self.group_members is not False

    async def _send_loop(self) -> None:
        # One sender keeps frames in order without making the stream wait for the layer. On a
        # shared layer it first waits for the group's size (one round trip): a reply nobody
        # follows over the layer, the usual case, then publishes nothing at all.
        if self.remote:
            await self.members_known.wait()
        while (event := await self.outbox.get()) is not None:
            if not self._group_listens():
                continue  # queued before the size was known, and nobody is there
            try:
                await self.layer.group_send(self.group, event)
                if self.first_frame_at is None and event["event"] == "delta":
                    self.first_frame_at = time.perf_counter()
            except Exception:
                log.exception("could not publish a frame of reply %s", self.code)

    # --- followers and control in this process ------------------------------------------------

    async def follow(
        self, after_seq: int, keepalive_s: float | None = None
    ) -> AsyncGenerator[dict[str, Any] | None]:
        """The events after `after_seq`, then live ones, to `done`; None after each
        `keepalive_s` without one. Ends early, without `done`, if the generation does."""
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        # Snapshot and subscription in one step of the loop: nothing falls between them.
        backlog = [e for e in self.events if e["seq"] > after_seq]
        self.listeners.add(queue)
        pauses = None if keepalive_s is None else _Pauses(queue, keepalive_s, _PAUSE)
        try:
            for past in backlog:
                yield past
                if past["event"] == "done":
                    return
            if self.ended:
                return
            while (event := await queue.get()) is not None:
                if event is _PAUSE:
                    yield None
                    continue
                if pauses is not None:
                    pauses.seen()
                yield event
                if event["event"] == "done":
                    return
        finally:
            self.listeners.discard(queue)
            if pauses is not None:
                pauses.cancel()

    def snapshot(self, through_layer: bool = True) -> dict[str, Any]:
        # Whoever asks through the layer has joined the thread's group and takes live events
        # from there on (a socket of this process takes them from its inbox).
        if through_layer:
            self.asked = True
        return {"type": "reply.snapshot_result", "message": self.code, "events": list(self.events)}

    def cancel(self) -> None:
        self.cancelled = True
        if self.stream_task is not None and not self.stream_task.done():
            self.stream_task.cancel()

    async def stop(self) -> str:
        """Cancel and wait for `done` (at most CANCEL_WAIT_S); return the final status."""
        events = self.follow(0)
        self.cancel()
        try:
            async with asyncio.timeout(CANCEL_WAIT_S):
                async for event in events:
                    if event is not None and event["event"] == "done":
                        return str(event["data"]["status"])
        except TimeoutError:
            pass
        finally:
            await events.aclose()  # type: ignore[attr-defined]
        return (await Message.objects.aget(pk=self.message_pk)).status

    # --- control from other processes ---------------------------------------------------

    async def _join_control_group(self) -> None:
        # Cancels and snapshot requests from other processes reach this process's control
        # channel (see _ControlChannel), which is in the control group from its start.
        self.control_channel = await _control_channel(self.layer)

    async def _control_loop(self) -> None:
        try:
            if not self.control_channel:
                await self._join_control_group()
            # Publish to the thread's group only if someone is in it (sockets open on the
            # thread now); anyone joining later asks for a snapshot first (see snapshot()).
            # Sockets of this process are in the group too, but get their frames directly.
            size = await _group_size(self.layer, self.group)
            self.group_members = size is None or size > len(_sockets.get(self.group, {}))
        finally:
            self.members_known.set()  # unknown after a failure: the sender publishes

    def control(self, msg: dict[str, Any]) -> Awaitable[None] | None:
        """Act on a control message from another process (cancel, snapshot request)."""
        if msg.get("type") == "reply.cancel":
            self.cancel()
        elif msg.get("type") == "reply.snapshot":
            return self.layer.send(msg["reply_channel"], self.snapshot())
        return None

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            await _update_active(self.message_pk, {"heartbeat": timezone.now()})

    # --- saves --------------------------------------------------------------------------

    def _save_soon(self, status: str) -> None:
        """Batch the partial reply into the row: at most one save in flight, one per interval."""
        now = time.perf_counter()
        if self.save_task is not None and not self.save_task.done():
            return
        if now - self.last_save < self.save_interval:
            return
        self.last_save = now
        fields: dict[str, Any] = {
            "status": status,
            "content": "".join(self.sent_text),
            "reasoning": "".join(self.sent_reasoning),
            "heartbeat": timezone.now(),
            "updated": timezone.now(),
        }
        if self.answering is not None:
            fields.update(provider=self.answering.provider, model=self.answering.model)
        self.save_task = asyncio.create_task(self._save(fields))

    async def _save(self, fields: dict[str, Any]) -> None:
        try:
            await _update_active(self.message_pk, fields)
        except Exception:
            log.exception("could not save the partial reply %s", self.code)

    async def _finish(self, status: str, error: str) -> None:
        if self.flush_handle is not None or self.pending_text or self.pending_reasoning:
            self._flush()
        if self.save_task is not None:
            await asyncio.gather(self.save_task, return_exceptions=True)
        text = "".join(self.sent_text)
        if status == Message.Status.CANCELLED:
            self.finish_reason = "cancelled"
        elif status == Message.Status.FAILED:
            self.finish_reason = "error"
        usage = self._final_usage(text)
        now = timezone.now()
        message = self.message
        message.status = status
        message.content = text
        message.reasoning = "".join(self.sent_reasoning)
        message.sources = self.sources
        message.error = error
        message.finish_reason = self.finish_reason or "stop"
        message.chain = self.chain
        if self.answering is not None:
            message.provider, message.model = self.answering.provider, self.answering.model
        if usage is not None:
            message.prompt_tokens = usage.prompt_tokens
            message.completion_tokens = usage.completion_tokens
            message.total_tokens = usage.total_tokens
            message.reasoning_tokens = usage.reasoning_tokens
            message.tokens_estimated = usage.estimated
        message.ttft_ms = self.ttft_ms
        message.latency_ms = round((time.perf_counter() - self.t0) * 1000)
        message.finished = message.updated = message.heartbeat = now
        timings = self._timings(message.latency_ms)
        # One trip to a worker thread for everything the end of a reply writes.
        done, calls = await database_sync_to_async(self._save_final, Priority.REPLY)(usage, timings)
        self._publish(done)
        count_calls(calls, message)

    def _save_final(
        self, usage: Usage | None, timings: ReplyTimings
    ) -> tuple[dict[str, Any], list[Any]]:
        """Price the reply, save it, record its attempts and cache its events (sync ORM);
        return the `done` event to publish once all of that is stored."""
        message = self.message
        # The catalog may read the database here (its cache expired): never on the loop.
        message.cost_usd, message.priced, message.vendor_cost_usd = _costs(
            self.attempts, usage, self.answering
        )
        # The thread's `updated` (the sidebar's order) was bumped when the turn was sent.
        rows.save_fields(message, FINAL_FIELDS)
        calls = _record_telemetry(message, self.attempts, timings)
        data = done_payload(message)
        data.update(warnings=self.warnings, continued_by=self.continued_by or None)
        done = self._event("done", data)
        cache.set(_events_cache_key(self.code), [*self.events, done], EVENTS_CACHE_S)
        return done, calls

    def _leave_queue(self) -> None:
        if self.queued:
            self.queued = False
            metrics.queue_depth.dec()

    def _timings(self, total_ms: int) -> ReplyTimings:
        answering = next((a for a in reversed(self.attempts) if a.outcome == "ok"), None)
        overhead = None
        if self.first_token_at is not None and self.first_frame_at is not None:
            overhead = max(0, round((self.first_frame_at - self.first_token_at) * 1000))
        return ReplyTimings(
            queued_ms=sum(a.queued_ms for a in self.attempts) if self.attempts else None,
            upstream_ttft_ms=answering.ttft_ms if answering else None,
            overhead_ms=overhead,
            ttft_ms=self.ttft_ms,
            total_ms=total_ms,
        )

    async def _fail_safely(self) -> None:
        """Listeners must always get a `done`, even when saving failed."""
        error = "The reply failed because of a server error."
        try:
            await self._finish(Message.Status.FAILED, error)
        except Exception:
            log.exception("reply %s could not be saved", self.message_pk)
            self.message.status = Message.Status.FAILED
            self.message.error = error
            self._emit("error", {"code": "server_error", "message": error})
            self._emit("done", done_payload(self.message))

    def _final_usage(self, text: str) -> Usage | None:
        if self.usage is not None:
            return self.usage
        if not self.attempts and not text:
            return None
        # The stream ended without the vendor's count (cut off, cancelled): estimate it.
        request = getattr(self, "request", None)
        usage = Usage(
            prompt_tokens=estimate_prompt_tokens(request.system, request.turns) if request else 0,
            completion_tokens=estimate_tokens(text) + estimate_tokens("".join(self.sent_reasoning)),
            estimated=True,
        )
        if self.attempts and self.attempts[-1].usage is None:
            self.attempts[-1].usage = usage
        return usage


def _costs(
    attempts: list[policy.Attempt], usage: Usage | None, answering: policy.Answering | None
) -> tuple[Decimal | None, bool, Decimal | None]:
    """Sum each attempt's tokens at its model's price; unpriced models make the sum unknown."""
    total = Decimal(0)
    vendor: Decimal | None = None
    priced = True
    counted = False
    for attempt in attempts:
        if attempt.usage is None:
            continue
        counted = True
        try:
            info = catalog.get_model(attempt.provider, attempt.model)
        except catalog.UnknownModelError:
            priced = False
            continue
        cost = info.cost(attempt.usage)
        if cost is None:
            priced = False
        else:
            total += cost
        if attempt.usage.vendor_cost_usd is not None:
            vendor = (vendor or Decimal(0)) + attempt.usage.vendor_cost_usd
    if not counted and usage is not None and answering is not None:
        info_cost = catalog.get_model(answering.provider, answering.model).cost(usage)
        if info_cost is None:
            return None, False, None
        total = info_cost
    return (total if priced else None), priced, vendor


def _record_telemetry(
    message: Message, attempts: list[policy.Attempt], timings: ReplyTimings
) -> list[Any]:
    # Telemetry never breaks chat: the recorder swallows its own errors, and so do we.
    try:
        return record_attempts(message, attempts, timings)
    except Exception:
        log.exception("telemetry for reply %s was not recorded", message.code)
        return []


# --- following a reply (SSE, blocking API) ------------------------------------------------


async def follow(
    message: Message, after_seq: int = 0, keepalive_s: float | None = None
) -> AsyncGenerator[dict[str, Any] | None]:
    """Yield a reply's events after `after_seq`: what happened so far, then live, to `done`;
    with `keepalive_s`, None after each such pause (an SSE response sends a comment then).

    A reply generated in this process is followed straight from its generation. Otherwise,
    through the channel layer (`_follow_through_layer`).
    """
    generation = _local.get(str(message.code))
    if generation is not None:
        async for event in generation.follow(after_seq, keepalive_s):
            yield event
        return
    events: AsyncGenerator[dict[str, Any] | None] = _follow_through_layer(message, after_seq)
    if keepalive_s is not None:
        events = _with_keepalives(events, keepalive_s)
    async with aclosing(events):
        async for event in events:
            yield event


async def _with_keepalives(
    events: AsyncIterator[dict[str, Any] | None], keepalive_s: float
) -> AsyncGenerator[dict[str, Any] | None]:
    """`events`, with None after each `keepalive_s` without one (read by a task of its own,
    so that a pause never interrupts a generator mid-step). Its errors are raised here."""
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    pause = ("pause", None)

    async def pump() -> None:
        try:
            async for event in events:
                queue.put_nowait(("event", event))
        except Exception as exc:
            queue.put_nowait(("error", exc))
        finally:
            queue.put_nowait(("end", None))

    task = asyncio.create_task(pump())
    pauses = _Pauses(queue, keepalive_s, pause)
    try:
        while True:
            kind, value = await queue.get()
            if kind == "pause":
                yield None
                continue
            pauses.seen()
            if kind == "error":
                raise value
            if kind == "end":
                return
            yield value
    finally:
        task.cancel()
        pauses.cancel()


async def _follow_through_layer(message: Message, after_seq: int) -> AsyncGenerator[dict[str, Any]]:
    """Follow a reply generated by another process (or already finished).

    1. Join the thread group, then ask the generation for a snapshot of its events.
    2. Until the snapshot arrives, live events are covered by it and skipped, except the
       very next one expected (a reply that has just started answers with its `start`).
    3. If nobody answers, the row decides: finished, still fresh (ask again), or orphaned
       by a dead process (ended as interrupted).
    """
    code = str(message.code)
    layer = _layer()
    channel = await layer.new_channel()
    group = thread_group(message.thread.code)
    await layer.group_add(group, channel)
    try:
        fresh = await Message.objects.select_related("reply_to").aget(pk=message.pk)
        if not fresh.is_active:
            for event in await _finished_events(fresh):
                if event["seq"] > after_seq:
                    yield event
            return
        await request_snapshot(code, channel)
        synced = False
        last = after_seq
        while True:
            try:
                msg = await asyncio.wait_for(
                    layer.receive(channel), IDLE_PROBE_S if synced else SNAPSHOT_TIMEOUT_S
                )
            except TimeoutError:
                if not synced:
                    fresh = await _settle_orphan(message.pk)
                    if not fresh.is_active:
                        for event in await _finished_events(fresh):
                            if event["seq"] > last:
                                yield event
                        return
                # Quiet for a while (a long queue wait?) or not started yet: ask again.
                synced = False
                await request_snapshot(code, channel)
                continue
            if msg.get("message") != code:
                continue
            if msg["type"] == "reply.snapshot_result":
                events = [e for e in msg["events"] if e["seq"] > last]
            elif msg["type"] == REPLY_EVENT and (synced or msg["seq"] == last + 1):
                events = [msg] if msg["seq"] > last else []
            elif msg["type"] == REPLY_EVENT and msg["event"] == "done":
                # Finished before it could answer the snapshot request.
                fresh = await Message.objects.select_related("reply_to").aget(pk=message.pk)
                events = [e for e in await _finished_events(fresh) if e["seq"] > last]
            else:
                continue
            synced = True
            for event in events:
                last = event["seq"]
                yield event
                if event["event"] == "done":
                    return
    finally:
        await layer.group_discard(group, channel)


async def _settle_orphan(pk: int) -> Message:
    """End a reply that no generation answers for and that shows no sign of life."""
    await sync_to_async(Message.objects.filter(pk=pk).reap_stale)(settings.STREAM_STALE_AFTER_S)
    return await Message.objects.select_related("reply_to").aget(pk=pk)


async def _finished_events(message: Message) -> list[dict[str, Any]]:
    cached = await cache.aget(_events_cache_key(message.code))
    return cached if cached else events_from_row(message)


CONTROL_GROUP = "reply-control"
CONTROL_REJOIN_S = 3600.0  # well inside channels_redis's group expiry (a day)


class _ControlChannel:
    """This process's one control channel on a shared layer, and the task that receives on it.

    Every process's control channel is in CONTROL_GROUP. A cancel or a snapshot request for
    a reply goes to the group, naming the reply (`message`); the process generating it acts,
    the others ignore it. Those requests are rare (a person pressing stop, a socket joining
    mid-reply), while replies are not: a reply costs no Redis round trip for its control,
    where a group per reply cost a join and a leave, and a `receive()` per reply made
    channels_redis spin up tasks and contend for one lock.
    """

    def __init__(self, layer: BaseChannelLayer, name: str) -> None:
        self.layer = layer
        self.name = name
        self.task = asyncio.create_task(self._receive(), name="reply-control")

    async def _receive(self) -> None:
        loop = asyncio.get_running_loop()
        joined = loop.time()  # _control_channel joined the group before starting this
        while True:
            try:
                if loop.time() - joined > CONTROL_REJOIN_S or not joined:
                    await self.layer.group_add(CONTROL_GROUP, self.name)
                    joined = loop.time()
                msg = await self.layer.receive(self.name)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the control channel failed; receiving again in 1 s")
                joined = 0.0  # join again: Redis may have lost the group
                await asyncio.sleep(1.0)  # Redis away: retry, without spinning
                continue
            generation = _local.get(str(msg.get("message", "")))
            if generation is None:
                continue  # ended meanwhile
            try:
                if (pending := generation.control(msg)) is not None:
                    await pending
            except Exception:
                log.exception(
                    "control message %s for reply %s failed", msg.get("type"), generation.code
                )


_control_channels: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _ControlChannel] = (
    weakref.WeakKeyDictionary()
)
_control_lock: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


async def _control_channel(layer: BaseChannelLayer) -> str:
    """The name of this process's (this event loop's) control channel, started on first use."""
    loop = asyncio.get_running_loop()
    control = _control_channels.get(loop)
    if control is None or control.layer is not layer or control.task.done():
        async with _control_lock.setdefault(loop, asyncio.Lock()):
            control = _control_channels.get(loop)
            if control is None or control.layer is not layer or control.task.done():
                name = await layer.new_channel()
                # In the group before any reply of this process can be asked about.
                await layer.group_add(CONTROL_GROUP, name)
                control = _ControlChannel(layer, name)
                _control_channels[loop] = control
    return control.name


async def request_snapshot(message_code: object, reply_channel: str) -> None:
    """Ask a running generation to send its state to `reply_channel`."""
    layer = _layer()
    generation = _local.get(str(message_code))
    socket = _socket_channels.get(reply_channel)
    if generation is not None and socket is not None:
        # Through the socket's inbox, so that it comes before the frames that follow it.
        socket.inbox.put_nowait(generation.snapshot(through_layer=False))
        return
    if generation is not None:
        await layer.send(reply_channel, generation.snapshot())
        return
    await layer.group_send(
        CONTROL_GROUP,
        {"type": "reply.snapshot", "message": str(message_code), "reply_channel": reply_channel},
    )


async def cancel(message: Message) -> str:
    """Stop a reply from anywhere; return its status once it has stopped (or its final one)."""
    generation = _local.get(str(message.code))
    if generation is not None:
        return await generation.stop()
    updated = await Message.objects.filter(pk=message.pk, status__in=Message.ACTIVE).aupdate(
        cancel_requested=True
    )
    if not updated:
        return (await Message.objects.aget(pk=message.pk)).status
    layer = _layer()
    channel = await layer.new_channel()
    group = thread_group(message.thread.code)
    await layer.group_add(group, channel)
    code = str(message.code)
    try:
        await layer.group_send(CONTROL_GROUP, {"type": "reply.cancel", "message": code})
        deadline = time.perf_counter() + CANCEL_WAIT_S
        while (left := deadline - time.perf_counter()) > 0:
            try:
                msg = await asyncio.wait_for(layer.receive(channel), left)
            except TimeoutError:
                break
            if msg.get("message") == code and msg.get("event") == "done":
                return str(msg["data"]["status"])
    finally:
        await layer.group_discard(group, channel)
    # No generation answered. If none has shown a sign of life lately, end it here.
    await (
        Message.objects.filter(pk=message.pk)
        .stale(settings.STREAM_STALE_AFTER_S)
        .aupdate(
            status=Message.Status.CANCELLED, finish_reason="cancelled", finished=timezone.now()
        )
    )
    return (await Message.objects.aget(pk=message.pk)).status
