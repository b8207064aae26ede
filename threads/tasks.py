"""Background jobs for threads (Celery; eager by default, see settings)."""

from __future__ import annotations

import asyncio
import logging
import re

from celery import shared_task
from django.conf import settings

from chatproject.db import Priority, database_sync_to_async

from .models import Message, Thread, _title_from

log = logging.getLogger(__name__)

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


# Jobs queued from the event loop, kept referenced until they are handed to Celery.
_queueing: set[asyncio.Task[None]] = set()


def title_soon(thread_id: int) -> None:
    """Queue `title_thread` for a new conversation, off the send's path.

    Handing a job to Celery is a broker round trip, or with eager jobs (the embedded
    defaults) the job itself, and Celery's first job in a process also loads its machinery
    (measured: 20 ms eager, 125 ms with the Redis broker). Inside a send that was time to
    the first token, and a broker outage failed the send; here it runs after the reply has
    started, on a database thread at the lowest priority, and a failure is only logged.
    """
    queue = database_sync_to_async(_queue_title, Priority.LATER)
    task = asyncio.get_running_loop().create_task(queue(thread_id))
    _queueing.add(task)
    task.add_done_callback(_queueing.discard)


def _queue_title(thread_id: int) -> None:
    try:
        title_thread.delay(thread_id)
    except Exception:
        log.exception("could not queue the title of thread %s", thread_id)


async def wait_queued() -> None:
    """Until every job queued with `title_soon` so far is with Celery (for tests)."""
    while _queueing:
        await asyncio.gather(*_queueing, return_exceptions=True)


@shared_task
def reap_stale_replies() -> int:
    """End replies whose server process died mid-stream (no heartbeat) as `interrupted`."""
    return Message.objects.reap_stale(settings.STREAM_STALE_AFTER_S)
