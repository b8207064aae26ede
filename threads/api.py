"""The JSON API: the same engine as the page, for programs (README, "The JSON API")."""

from __future__ import annotations

import base64
import binascii
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from asgiref.sync import sync_to_async
from django.db.models import Q
from django.http import HttpRequest, StreamingHttpResponse
from django.utils import timezone
from ninja import Field, Router, Schema, Status
from ninja.security import HttpBearer

from chatproject.db import database_sync_to_async
from providers import catalog
from providers.base import ChatRequest
from providers.registry import get_provider

from . import replies, rows, send_reads
from .events import sse_frame
from .models import ApiKey, Message, Organization, Thread, add_exchange
from .validation import check_send

log = logging.getLogger(__name__)

router = Router(tags=["chat"])

KEEPALIVE_S = 15.0
KEY_TOUCH_EVERY = timedelta(minutes=1)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field


class ApiKeyAuth(HttpBearer):
    def __call__(self, request: HttpRequest) -> Any:
        header = request.headers.get("Authorization", "")
        if not header:
            raise ApiError(401, "unauthorized", "Send an API key: 'Authorization: Bearer <key>'.")
        return super().__call__(request)

    def authenticate(self, request: HttpRequest, token: str) -> Organization:
        return org_for_key(token, request.headers.get("x-org-id"))


@dataclass(frozen=True, slots=True)
class KeyToCheck:
    """A bearer key read from the request but not checked yet (see LateKeyAuth)."""

    token: str
    org_slug: str | None


class LateKeyAuth(ApiKeyAuth):
    """For async views that go to the database anyway (sending, cancelling): the header is
    read here, on the event loop, and the key is checked by `org_of` inside the view's own
    trip to a worker thread, so a request makes one thread hop instead of two."""

    is_async = True  # django-ninja awaits this instead of running it in a thread

    async def __call__(self, request: HttpRequest) -> Any:  # type: ignore[override]
        return super().__call__(request)

    def authenticate(self, request: HttpRequest, token: str) -> KeyToCheck:  # type: ignore[override]
        return KeyToCheck(token, request.headers.get("x-org-id"))


def org_for_key(token: str, org_slug: str | None) -> Organization:
    """The organisation of an active API key (sync ORM); 401/403 ApiError otherwise."""
    key = ApiKey.objects.active().select_related("org").filter(hashed=ApiKey.hash(token)).first()
    if key is None:
        raise ApiError(401, "unauthorized", "The API key is unknown or revoked.")
    if org_slug is not None and org_slug != key.org.slug:
        raise ApiError(403, "forbidden", "The x-org-id header names another organisation.")
    now = timezone.now()
    if key.last_used is None or key.last_used < now - KEY_TOUCH_EVERY:
        _touch_key(key.pk, now)
    return key.org


def _touch_key(pk: int, now: datetime) -> None:
    # Use is recorded at most once a minute (KEY_TOUCH_EVERY), not a write per request.
    rows.update(ApiKey, pk, {"last_used": now})


def org_of(auth: Organization | KeyToCheck) -> Organization:
    """request.auth as an organisation, checking a LateKeyAuth key now (sync ORM)."""
    if isinstance(auth, KeyToCheck):
        return org_for_key(auth.token, auth.org_slug)
    return auth


auth = ApiKeyAuth()
late_auth = LateKeyAuth()


# --- Schemas ------------------------------------------------------------------------------


class ThreadIn(Schema):
    title: str = Field("", max_length=200)
    system_prompt: str = Field("", max_length=8000)


class ThreadPatch(Schema):
    title: str | None = Field(None, max_length=200)
    system_prompt: str | None = Field(None, max_length=8000)
    archived: bool | None = None


class ThreadOut(Schema):
    id: uuid.UUID
    title: str
    system_prompt: str
    archived: bool
    provider: str
    model: str
    created: datetime
    updated: datetime


class UsageOut(Schema):
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    reasoning_tokens: int | None
    estimated: bool


class MessageOut(Schema):
    id: uuid.UUID
    thread_id: uuid.UUID
    role: str
    content: str
    reasoning: str
    status: str
    sources: list[dict[str, Any]]
    reply_to: uuid.UUID | None
    requested_provider: str
    requested_model: str
    provider: str
    model: str
    chain: list[str]
    finish_reason: str
    error: str
    usage: UsageOut
    cost_usd: str | None
    priced: bool
    vendor_cost_usd: str | None
    ttft_ms: int | None
    latency_ms: int | None
    created: datetime
    finished: datetime | None


class SendIn(Schema):
    content: str
    role: Literal["user"] = "user"
    provider: str
    model: str
    client_id: str | None = Field(None, max_length=64)


class SendOut(Schema):
    user_message: MessageOut
    assistant_message: MessageOut


class CancelOut(Schema):
    message_id: uuid.UUID
    status: str


class ModelOut(Schema):
    provider: str
    id: str
    display_name: str
    available: bool
    unavailable_reason: str
    tier: str
    input_per_mtok: str | None
    output_per_mtok: str | None
    context_window: int | None
    capabilities: list[str]
    status: str


class ThreadPage(Schema):
    items: list[ThreadOut]
    next_cursor: str | None


class MessagePage(Schema):
    items: list[MessageOut]
    next_cursor: str | None


# --- Serialisers --------------------------------------------------------------------------


def thread_out(thread: Thread) -> dict[str, Any]:
    return {
        "id": thread.code,
        "title": thread.title,
        "system_prompt": thread.system_prompt,
        "archived": thread.archived,
        "provider": thread.provider,
        "model": thread.model,
        "created": thread.created,
        "updated": thread.updated,
    }


def message_out(message: Message) -> dict[str, Any]:
    return {
        "id": message.code,
        "thread_id": message.thread.code,
        "role": message.role,
        "content": message.content,
        "reasoning": message.reasoning,
        "status": message.status,
        "sources": message.sources,
        "reply_to": message.reply_to.code if message.reply_to else None,
        "requested_provider": message.requested_provider,
        "requested_model": message.requested_model,
        "provider": message.provider,
        "model": message.model,
        "chain": message.chain,
        "finish_reason": message.finish_reason,
        "error": message.error,
        "usage": message.usage_dict(),
        "cost_usd": message.cost_str(),
        "priced": message.priced,
        "vendor_cost_usd": (
            None if message.vendor_cost_usd is None else str(message.vendor_cost_usd.normalize())
        ),
        "ttft_ms": message.ttft_ms,
        "latency_ms": message.latency_ms,
        "created": message.created,
        "finished": message.finished,
    }


def _encode_cursor(when: datetime, pk: int) -> str:
    return base64.urlsafe_b64encode(f"{when.isoformat()}|{pk}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        when, pk = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        return datetime.fromisoformat(when), int(pk)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ApiError(422, "validation_error", "The cursor is not valid.", "cursor") from None


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= 100:
        raise ApiError(422, "validation_error", "limit must be between 1 and 100.", "limit")


def _get_thread(org: Organization, thread_id: uuid.UUID) -> Thread:
    thread = Thread.objects.select_related("org").filter(org=org, code=thread_id).first()
    if thread is None:
        raise ApiError(404, "not_found", "No such thread.")
    return thread


def _get_message(org: Organization, message_id: uuid.UUID) -> Message:
    message = (
        Message.objects.select_related("thread__org", "reply_to")
        .filter(thread__org=org, code=message_id)
        .first()
    )
    if message is None:
        raise ApiError(404, "not_found", "No such message.")
    return message


# --- Threads ------------------------------------------------------------------------------


@router.get("/threads", response=ThreadPage, auth=auth)
def list_threads(
    request: HttpRequest, limit: int = 20, cursor: str | None = None, archived: bool = False
) -> dict[str, Any]:
    _check_limit(limit)
    qs = Thread.objects.for_org(request.auth).filter(archived=archived)
    if cursor:
        when, pk = _decode_cursor(cursor)
        qs = qs.filter(Q(created__lt=when) | Q(created=when, pk__lt=pk))
    rows = list(qs.order_by("-created", "-pk")[: limit + 1])
    next_cursor = (
        _encode_cursor(rows[limit - 1].created, rows[limit - 1].pk) if len(rows) > limit else None
    )
    return {"items": [thread_out(t) for t in rows[:limit]], "next_cursor": next_cursor}


@router.post("/threads", response={201: ThreadOut}, auth=auth)
def create_thread(request: HttpRequest, payload: ThreadIn) -> Status[dict[str, Any]]:
    thread = Thread.objects.create(
        org=request.auth, title=payload.title, system_prompt=payload.system_prompt
    )
    return Status(201, thread_out(thread))


@router.get("/threads/{thread_id}", response=ThreadOut, auth=auth)
def get_thread(request: HttpRequest, thread_id: uuid.UUID) -> dict[str, Any]:
    return thread_out(_get_thread(request.auth, thread_id))


@router.patch("/threads/{thread_id}", response=ThreadOut, auth=auth)
def update_thread(
    request: HttpRequest, thread_id: uuid.UUID, payload: ThreadPatch
) -> dict[str, Any]:
    thread = _get_thread(request.auth, thread_id)
    changes = payload.dict(exclude_unset=True, exclude_none=True)
    for name, value in changes.items():
        setattr(thread, name, value)
    if changes:
        thread.save(update_fields=[*changes, "updated"] if "updated" in changes else list(changes))
    return thread_out(thread)


@router.delete("/threads/{thread_id}", response={204: None}, auth=auth)
def delete_thread(request: HttpRequest, thread_id: uuid.UUID) -> Status[None]:
    _get_thread(request.auth, thread_id).delete()
    return Status(204, None)


@router.get("/threads/{thread_id}/messages", response=MessagePage, auth=auth)
def list_messages(
    request: HttpRequest, thread_id: uuid.UUID, limit: int = 50, cursor: str | None = None
) -> dict[str, Any]:
    _check_limit(limit)
    thread = _get_thread(request.auth, thread_id)
    qs = thread.messages.select_related("thread", "reply_to")
    if cursor:
        when, pk = _decode_cursor(cursor)
        qs = qs.filter(Q(created__gt=when) | Q(created=when, pk__gt=pk))
    rows = list(qs.order_by("created", "pk")[: limit + 1])
    next_cursor = (
        _encode_cursor(rows[limit - 1].created, rows[limit - 1].pk) if len(rows) > limit else None
    )
    return {"items": [message_out(m) for m in rows[:limit]], "next_cursor": next_cursor}


# --- Sending ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Sent:
    user_message: Message
    reply: Message
    created: bool  # False: the client_id was seen before; follow the existing reply
    request: ChatRequest | None  # what the new reply's generation starts from


def _save_send(auth: Organization | KeyToCheck, thread_id: uuid.UUID, payload: SendIn) -> _Sent:
    """Check the key, the thread and the message, save the turn and prepare its reply: the
    whole send in one trip to a worker thread (sync ORM)."""
    gate = None
    if isinstance(auth, KeyToCheck):
        # The usual case in one statement; anything unusual takes the checks below.
        now = timezone.now()
        gate = send_reads.gate(auth.token, auth.org_slug, thread_id, now - KEY_TOUCH_EVERY)
    if gate is not None:
        thread = gate.thread
        if gate.key_due:
            _touch_key(gate.key_id, now)
        # The gate lets no organisation with a budget through: no budget to check.
        errors = check_send(payload.content, payload.provider, payload.model)
    else:
        thread = _get_thread(org_of(auth), thread_id)
        errors = check_send(payload.content, payload.provider, payload.model, org=thread.org)
    if errors:
        first = errors[0]
        raise ApiError(first.status, first.code, first.message, first.field)
    user_message, reply, created = add_exchange(
        thread,
        content=payload.content,
        provider=payload.provider,
        model=payload.model,
        client_id=payload.client_id or "",
    )
    if not created:
        return _Sent(user_message, reply, created, None)
    # The gate read the conversation before this turn: no read after the insert.
    earlier = None if gate is None else gate.history
    request = replies.request_after_turn(reply, earlier, user_message)
    return _Sent(user_message, reply, created, request)


def _reload_pair(user_message: Message, reply: Message) -> dict[str, Any]:
    qs = Message.objects.select_related("thread", "reply_to")
    return {
        "user_message": message_out(qs.get(pk=user_message.pk)),
        "assistant_message": message_out(qs.get(pk=reply.pk)),
    }


@router.post("/threads/{thread_id}/messages", response=SendOut, auth=late_auth)
async def send_message(
    request: HttpRequest, thread_id: uuid.UUID, payload: SendIn
) -> dict[str, Any]:
    """Send a message and wait for the whole reply."""
    sent = await database_sync_to_async(_save_send)(request.auth, thread_id, payload)
    if sent.created:
        replies.start(sent.reply, sent.request)
    async for _event in replies.follow(sent.reply):
        pass  # to `done`
    return await sync_to_async(_reload_pair)(sent.user_message, sent.reply)


@router.post("/threads/{thread_id}/messages/stream", auth=late_auth)
async def stream_message(
    request: HttpRequest, thread_id: uuid.UUID, payload: SendIn
) -> StreamingHttpResponse:
    """Send a message and stream the reply as Server-Sent Events (README lists the events).

    A repeated client_id attaches to the existing reply; `Last-Event-ID` resumes after it.
    """
    sent = await database_sync_to_async(_save_send)(request.auth, thread_id, payload)
    if sent.created:
        replies.start(sent.reply, sent.request)
    reply = sent.reply
    try:
        after = int(request.headers.get("Last-Event-ID", "0"))
    except ValueError:
        after = 0
    response = StreamingHttpResponse(_sse(reply, after), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


async def _sse(reply: Message, after: int) -> AsyncIterator[bytes]:
    last = after
    try:
        async with aclosing(replies.follow(reply, after, keepalive_s=KEEPALIVE_S)) as events:
            async for event in events:
                if event is None:
                    yield b": keep-alive\n\n"
                    continue
                last = event["seq"]
                yield sse_frame(event["event"], event["data"], event["seq"])
                if event["event"] == "done":
                    return
    except Exception:
        log.exception("following reply %s failed", reply.code)
    # Following broke off before `done` (an error in this process): `done` is always the
    # last event, so end with what the row says now.
    message = await Message.objects.select_related("reply_to").aget(pk=reply.pk)
    data = replies.done_payload(message)
    yield sse_frame(
        "error",
        {"code": "stream_lost", "message": "Lost track of the reply; reload it to see it."},
        last + 1,
    )
    yield sse_frame("done", data, last + 2)


@router.post("/messages/{message_id}/cancel", response=CancelOut, auth=late_auth)
async def cancel_message(request: HttpRequest, message_id: uuid.UUID) -> dict[str, Any]:
    message = await sync_to_async(lambda: _get_message(org_of(request.auth), message_id))()
    status = await replies.cancel(message)
    return {"message_id": message.code, "status": status}


# --- Models -------------------------------------------------------------------------------


@router.get("/models", response=list[ModelOut], auth=auth)
def list_models(request: HttpRequest) -> list[dict[str, Any]]:
    out = []
    for info in catalog.list_models():
        reason = get_provider(info.provider).unavailable_reason()
        out.append(
            {
                "provider": info.provider,
                "id": info.id,
                "display_name": info.display_name,
                "available": not reason,
                "unavailable_reason": reason,
                "tier": info.tier,
                "input_per_mtok": None if info.input_per_mtok is None else str(info.input_per_mtok),
                "output_per_mtok": None
                if info.output_per_mtok is None
                else str(info.output_per_mtok),
                "context_window": info.context_window,
                "capabilities": list(info.capabilities),
                "status": info.status,
            }
        )
    return out


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": {"code": code, "message": message}}
    if field:
        body["error"]["field"] = field
    return body
