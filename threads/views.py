from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import AbstractBaseUser
from django.contrib.auth.views import redirect_to_login
from django.db.models import Q
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseClientRedirect
from django_htmx.middleware import HtmxDetails

from chatproject.db import database_sync_to_async
from providers import catalog
from providers.base import ChatRequest
from providers.registry import get_provider
from telemetry.budgets import budget_status

from . import exports, replies, send_reads, tasks
from .models import Message, Organization, Thread, add_exchange
from .tenancy import (
    SESSION_ORG_KEY,
    current_org,
    get_message_for_user,
    get_thread_for_user,
    orgs_for_user,
)
from .validation import FieldError, check_send


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails
    user: AbstractBaseUser  # type: ignore[assignment]


def _picker(thread: Thread | None) -> dict[str, Any]:
    """Models grouped by provider, unavailable providers greyed with the reason."""
    groups: dict[str, dict[str, Any]] = {}
    for info in catalog.list_models():
        provider = get_provider(info.provider)
        group = groups.setdefault(
            info.provider,
            {
                "id": info.provider,
                "name": provider.display_name,
                "reason": provider.unavailable_reason(),
                "models": [],
            },
        )
        group["models"].append(
            {
                "id": info.id,
                "display_name": info.display_name,
                "tier": info.tier,
                "price": _price_label(info),
            }
        )
    selected_provider = (thread and thread.provider) or settings.DEFAULT_PROVIDER
    selected_model = (thread and thread.model) or settings.DEFAULT_MODEL
    return {
        "groups": list(groups.values()),
        "selected": f"{selected_provider}:{selected_model}",
    }


def _price_label(info: catalog.ModelInfo) -> str:
    prices = info.input_per_mtok, info.output_per_mtok
    if prices[0] is None or prices[1] is None:
        return "unpriced"
    if info.free:
        return "free"
    return f"${prices[0].normalize():f}/${prices[1].normalize():f} per M tokens"


def _thread_list(org: Organization, q: str = "") -> list[Thread]:
    threads = Thread.objects.for_org(org).filter(archived=False)
    if q:
        # Title or any message's text; distinct because one thread has many messages.
        threads = threads.filter(Q(title__icontains=q) | Q(messages__content__icontains=q))
        threads = threads.distinct()
    return list(threads.order_by("-updated")[:100])


def _page_context(
    request: HttpRequest, org: Organization, thread: Thread | None, q: str = ""
) -> dict[str, Any]:
    threads = _thread_list(org, q)
    return {
        "q": q,
        "org": org,
        "orgs": orgs_for_user(request.user),
        "threads": threads,
        "thread": thread,
        "picker": _picker(thread),
        "max_chars": settings.MAX_MESSAGE_CHARS,
        "budget": budget_status(org),
    }


@require_GET
@login_required
def index(request: HtmxHttpRequest) -> HttpResponse:
    org = current_org(request)
    latest = Thread.objects.for_org(org).filter(archived=False).order_by("-updated").first()
    if latest is not None:
        return redirect("threads:detail", code=latest.code)
    return render(request, "threads/thread_detail.html", _page_context(request, org, None))


@require_POST
@login_required
def new_thread(request: HtmxHttpRequest) -> HttpResponse:
    org = current_org(request)
    thread = Thread.objects.create(org=org, creator=request.user)
    url = reverse("threads:detail", kwargs={"code": thread.code})
    if request.htmx:
        return HttpResponseClientRedirect(url)
    return redirect(url)


@require_GET
@login_required
def thread_detail(request: HtmxHttpRequest, code: uuid.UUID) -> HttpResponse:
    thread = get_thread_for_user(request, code)
    replies.settle_orphans(thread)
    if request.session.get(SESSION_ORG_KEY) != thread.org.slug:
        request.session[SESSION_ORG_KEY] = thread.org.slug
    context = _page_context(request, thread.org, thread)
    context["messages_list"] = list(
        thread.messages.select_related("reply_to").order_by("created", "id")
    )
    response = render(request, "threads/thread_detail.html", context)
    response["Vary"] = "HX-Request"
    return response


@require_POST
@login_required
def switch_org(request: HtmxHttpRequest) -> HttpResponse:
    slug = request.POST.get("org", "")
    if any(o.slug == slug for o in orgs_for_user(request.user)):
        request.session[SESSION_ORG_KEY] = slug
    return redirect("threads:index")


@dataclass(slots=True)
class _Send:
    thread: Thread
    errors: list[FieldError]
    user_message: Message | None = None
    reply: Message | None = None
    created: bool = False
    request: ChatRequest | None = None  # what a new reply's generation starts from
    earlier: list[tuple[str, str]] | None = None  # the conversation before, if read already
    title_due: bool = False  # a new conversation: title it once the reply has started
    response: HttpResponse | None = None


def _save_send(request: HtmxHttpRequest, code: uuid.UUID) -> _Send:
    # Thread, organisation, membership, budget and emptiness in one statement.
    found = send_reads.member_thread(request.user.pk, code)
    if found is None:
        # No such thread here: the ORM's checks answer 404 (or, after a race, find it).
        thread = get_thread_for_user(request, code)
        budget_org, first = thread.org, not thread.messages.exists()
    else:
        thread, first = found.thread, found.empty
        budget_org = thread.org if found.budgeted else None
    content = request.POST.get("content", "")
    provider, _, model = request.POST.get("model", "").partition(":")
    client_id = request.POST.get("client_id", "")[:64]
    errors = check_send(content, provider, model, org=budget_org)
    if errors:
        return _Send(thread, errors)
    user_message, reply, created = add_exchange(
        thread,
        content=content,
        provider=provider,
        model=model,
        author=request.user,
        client_id=client_id,
    )
    earlier = None if found is None else found.history
    title_due = created and first
    return _Send(thread, [], user_message, reply, created, earlier=earlier, title_due=title_due)


def _send_response(request: HtmxHttpRequest, sent: _Send) -> HttpResponse:
    if sent.errors:
        return render(
            request,
            "threads/thread_detail.html#compose-errors",
            {"errors": sent.errors},
            status=422,
        )
    if not request.htmx:
        return redirect("threads:detail", code=sent.thread.code)
    return render(
        request,
        "threads/thread_detail.html#sent",
        {"user_message": sent.user_message, "reply": sent.reply},
    )


@require_POST
async def send(request: HtmxHttpRequest, code: uuid.UUID) -> HttpResponse:
    """Save the person's message first, answer with it and a skeleton, then generate.

    Signed-in only, checked inside the save's own trip to the database (login_required would
    load the user in a trip of its own first)."""
    # Shielded: a person who closes the tab mid-request must not leave a saved turn
    # that never starts.
    return await asyncio.shield(_save_and_start(_save_send, request, code))


async def _save_and_start(
    save: Callable[[HtmxHttpRequest, uuid.UUID], _Send], request: HtmxHttpRequest, code: uuid.UUID
) -> HttpResponse:
    def save_and_render() -> _Send | HttpResponse:
        # One trip to a worker thread: who is asking, save the turn, prepare its reply, render.
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        sent = save(request, code)
        if sent.created and sent.reply is not None and sent.user_message is not None:
            reply, turn = sent.reply, sent.user_message
            sent.request = replies.request_after_turn(reply, sent.earlier, turn)
        sent.response = _send_response(request, sent)
        return sent

    # database_sync_to_async: the connection goes back (to the pool) before the reply runs.
    sent = await database_sync_to_async(save_and_render)()
    if isinstance(sent, HttpResponse):
        return sent  # not signed in
    if sent.created and sent.reply is not None:
        replies.start(sent.reply, sent.request)
    if sent.title_due:
        tasks.title_soon(sent.thread.pk)
    assert sent.response is not None
    return sent.response


@require_POST
@login_required
async def cancel(request: HtmxHttpRequest, code: uuid.UUID) -> HttpResponse:
    message = await database_sync_to_async(get_message_for_user)(request, code)
    await replies.cancel(message)
    if not request.htmx:
        return redirect("threads:detail", code=message.thread.code)
    # The socket shows the stopped reply; this answer only confirms.
    return HttpResponse(status=204)


@require_GET
@login_required
def search(request: HtmxHttpRequest) -> HttpResponse:
    org = current_org(request)
    q = request.GET.get("q", "").strip()[:200]
    context = _page_context(request, org, None, q)
    template = "threads/thread_detail.html"
    if request.htmx:
        template += "#thread-list"
    response = render(request, template, context)
    response["Vary"] = "HX-Request"
    return response


@require_POST
@login_required
def rename(request: HtmxHttpRequest, code: uuid.UUID) -> HttpResponse:
    thread = get_thread_for_user(request, code)
    title = " ".join(request.POST.get("title", "").split())[:200]
    if title:
        thread.title = title
        thread.save(update_fields=["title"])
    return redirect("threads:detail", code=thread.code)


@require_POST
@login_required
def archive(request: HtmxHttpRequest, code: uuid.UUID) -> HttpResponse:
    thread = get_thread_for_user(request, code)
    thread.archived = True
    thread.save(update_fields=["archived"])
    return redirect("threads:index")


@require_POST
@login_required
def delete(request: HtmxHttpRequest, code: uuid.UUID) -> HttpResponse:
    thread = get_thread_for_user(request, code)
    thread.delete()
    return redirect("threads:index")


@require_GET
@login_required
def export(request: HtmxHttpRequest, code: uuid.UUID, fmt: str) -> HttpResponse:
    thread = get_thread_for_user(request, code)
    filename = exports.filename(thread, fmt)
    if fmt == "json":
        response: HttpResponse = JsonResponse(
            exports.as_dict(thread), json_dumps_params={"indent": 2, "ensure_ascii": False}
        )
    elif fmt == "md":
        response = HttpResponse(exports.as_markdown(thread), content_type="text/markdown")
    else:
        raise Http404
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def _save_regenerate(request: HtmxHttpRequest, code: uuid.UUID) -> _Send:
    """Ask a reply's question again: a new turn with the same text and the thread's model."""
    message = get_message_for_user(request, code)
    thread = message.thread
    question = message.reply_to
    if message.role != Message.Role.ASSISTANT or question is None or message.is_active:
        raise Http404
    provider = thread.provider or message.requested_provider
    model = thread.model or message.requested_model
    errors = check_send(question.content, provider, model, org=thread.org)
    if errors:
        return _Send(thread, errors)
    user_message, reply, created = add_exchange(
        thread, content=question.content, provider=provider, model=model, author=request.user
    )
    return _Send(thread, [], user_message, reply, created)


@require_POST
async def regenerate(request: HtmxHttpRequest, code: uuid.UUID) -> HttpResponse:
    # Signed-in only: checked in the save's trip to the database, as for send.
    return await asyncio.shield(_save_and_start(_save_regenerate, request, code))
