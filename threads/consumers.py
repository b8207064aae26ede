"""The thread page's WebSocket: joins the thread group and relays reply frames as HTML.

The consumer owns no provider call (see replies.py). On connect it asks every reply still in
flight for a snapshot and renders it whole, then applies only the live events that come after
it, so a reload or a second tab sees the same stream.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.template.loader import render_to_string
from django.utils.html import escape

from .events import thread_group
from .models import Message, Thread
from .replies import attach_socket, detach_socket, held_row, request_snapshot
from .send_reads import member_thread


class ThreadConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        code = self.scope["url_route"]["kwargs"]["code"]
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        thread = await _get_thread(user, code)
        if thread is None:
            await self.close(code=4404)
            return
        self.thread = thread
        self.group = thread_group(thread.code)
        # Replies this socket shows: message code -> last seq applied (None: awaiting snapshot).
        self.synced: dict[str, int | None] = {}
        self.shown: set[str] = set()  # replies shown finished
        # Messages come through the layer and, from generations in this process, through an
        # inbox: one at a time, so frames keep their order.
        self.handling = asyncio.Lock()
        await self.channel_layer.group_add(self.group, self.channel_name)
        self.local = attach_socket(self.group, self.channel_name, self._handle_local)
        await self.accept()
        for code in await _active_reply_codes(thread):
            self.synced[code] = None
            await request_snapshot(code, self.channel_name)

    async def dispatch(self, message: dict[str, Any]) -> None:
        # channels' own dispatch first closes old database connections in a worker thread:
        # a thread hop before every frame of every reply, for every socket. The handlers
        # here reach the database only through database_sync_to_async, which does that
        # itself around each call.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def disconnect(self, close_code: int) -> None:
        detach_socket(getattr(self, "local", None))
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        # The page sends nothing over the socket: sending and stopping are plain POSTs.
        return

    async def _handle_local(self, message: dict[str, Any]) -> None:
        if message["type"] == "reply.snapshot_result":
            await self.reply_snapshot_result(message)
        else:
            await self.reply_event(message)

    async def reply_snapshot_result(self, event: dict[str, Any]) -> None:
        async with self.handling:
            await self._apply_snapshot(event)

    async def reply_event(self, event: dict[str, Any]) -> None:
        async with self.handling:
            await self._apply_event(event)

    async def _apply_snapshot(self, event: dict[str, Any]) -> None:
        code = event["message"]
        if code not in self.synced or self.synced[code] is not None:
            return
        events = event["events"]
        self.synced[code] = events[-1]["seq"] if events else 0
        message = await _get_message(self.thread, code)
        if message is None:
            return
        if any(e["event"] == "done" for e in events):
            await self._send_final(code)
            return
        # Render what the snapshot holds, not the row, which may be ahead of it or behind.
        state = _state_from_events(events)
        message.status = Message.Status.STREAMING if state["text"] else Message.Status.QUEUED
        await self.send(text_data=_render_message(message, state, oob="outerHTML"))

    async def _apply_event(self, event: dict[str, Any]) -> None:
        code = event["message"]
        name = event["event"]
        if code in self.shown:
            return  # finished here; a late copy (the layer's, after the inbox's) changes nothing
        if code not in self.synced:
            if name != "start":
                return
            # A reply started elsewhere (another tab, the API): show its turn here too.
            self.synced[code] = event["seq"]
            message = await _get_message(self.thread, code)
            if message is None:
                return
            html = ""
            if message.reply_to is not None:
                html += _render_message(message.reply_to, None, oob="beforeend:#message-list")
            # Its frames follow, so it starts empty whatever the row says by now.
            message.status = Message.Status.QUEUED
            live = {"text": "", "reasoning": ""}
            html += _render_message(message, live, oob="beforeend:#message-list")
            await self.send(text_data=html)
            return
        last = self.synced[code]
        if last is None or event["seq"] <= last:
            return  # covered by the snapshot we are waiting for, or already applied
        self.synced[code] = event["seq"]
        if name == "done":
            await self._send_final(code)
            return
        html = _render_event(code, name, event["data"])
        if html:
            await self.send(text_data=html)

    async def _send_final(self, code: str) -> None:
        self.synced.pop(code, None)
        self.shown.add(code)
        message = await _get_message(self.thread, code)
        if message is not None:
            await self.send(text_data=_render_message(message, None, oob="outerHTML"))


def _state_from_events(events: list[dict[str, Any]]) -> dict[str, Any]:
    text: list[str] = []
    reasoning: list[str] = []
    state: dict[str, Any] = {}
    for event in events:
        name, data = event["event"], event["data"]
        if name == "delta":
            text.append(data["text"])
        elif name == "reasoning":
            reasoning.append(data["text"])
        elif name == "sources":
            state["sources"] = data["items"]
        elif name == "status":
            state["status"] = data
    state["text"] = "".join(text)
    state["reasoning"] = "".join(reasoning)
    return state


def _render_message(message: Message, live: dict[str, Any] | None, oob: str) -> str:
    return render_to_string(
        "threads/thread_detail.html#message",
        {"message": message, "live": live, "oob": oob},
    )


# The frames a reply streams most, one per STREAM_FRAME_INTERVAL_MS for every socket on the
# thread, skip the template engine: the same markup as the `frame-delta` and
# `frame-reasoning` partials (a test keeps them equal) for a tenth of the cost.
_APPENDED = {"delta": "body", "reasoning": "reasoning"}


def _render_event(code: str, name: str, data: dict[str, Any]) -> str:
    if (target := _APPENDED.get(name)) is not None:
        text = escape(data["text"])
        return f'<span id="{target}-{escape(code)}" hx-swap-oob="beforeend">{text}</span>'
    if name in ("status", "sources", "error"):
        return render_to_string(
            f"threads/thread_detail.html#frame-{name}", {"code": code, "data": data}
        )
    return ""


@database_sync_to_async
def _get_thread(user: Any, code: uuid.UUID) -> Thread | None:
    # The thread, if the user is a member of its organisation (tenancy's rule, one statement).
    found = member_thread(user.pk, code)
    return None if found is None else found.thread


@database_sync_to_async
def _active_reply_codes(thread: Thread) -> list[str]:
    rows = Message.objects.filter(
        thread=thread, role=Message.Role.ASSISTANT, status__in=Message.ACTIVE
    ).values_list("code", flat=True)
    return [str(code) for code in rows]


async def _get_message(thread: Thread, code: str) -> Message | None:
    # A reply generated in this process is rendered from what its generation holds.
    row = held_row(code)
    if row is not None and row.thread_id == thread.pk:
        return row
    return await _read_message(thread, code)


@database_sync_to_async
def _read_message(thread: Thread, code: str) -> Message | None:
    return Message.objects.select_related("reply_to").filter(thread=thread, code=code).first()
