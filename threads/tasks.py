"""Background jobs for threads (Celery; eager by default, see settings)."""

from __future__ import annotations

import re

from celery import shared_task
from django.conf import settings

from .models import Message, Thread, _title_from

TITLE_MAX = 60
_MARKUP = re.compile(r"[`*_#>\[\]()~|]+")
_FILLER = re.compile(
    r"^(please |can you |could you |would you |i want you to |hey,? |hi,? |hello,? )+", re.I
)


def title_for(question: str) -> str:
    """A short title from the first question: no Markdown, no filler, cut at a word."""
    line = next((ln for ln in question.splitlines() if ln.strip()), "")
    text = " ".join(_MARKUP.sub(" ", line).split())
    text = _FILLER.sub("", text).strip(" ?.!:,;")
    if len(text) > TITLE_MAX:
        text = text[:TITLE_MAX].rsplit(" ", 1)[0].rstrip(" ,;:") + "…"
    return text[:1].upper() + text[1:]


@shared_task(ignore_result=True)
def title_thread(thread_id: int) -> None:
    """Give a thread a title from its first exchange, unless a person has named it."""
    thread = Thread.objects.filter(pk=thread_id).first()
    if thread is None:
        return
    first = thread.messages.filter(role=Message.Role.USER).order_by("created", "id").first()
    if first is None:
        return
    # add_exchange sets a provisional title from the first line; a rename replaces it.
    if thread.title and thread.title != _title_from(first.content):
        return
    title = title_for(first.content)
    if title and title != thread.title:
        Thread.objects.filter(pk=thread.pk, title=thread.title).update(title=title)


@shared_task
def reap_stale_replies() -> int:
    """End replies whose server process died mid-stream (no heartbeat) as `interrupted`."""
    return Message.objects.reap_stale(settings.STREAM_STALE_AFTER_S)
