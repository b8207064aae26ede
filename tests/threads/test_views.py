from __future__ import annotations

import json
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient, Client
from django.urls import reverse

from tests.factories import make_exchange, make_org, make_thread, make_user
from threads import replies, tasks
from threads.models import Message, Thread
from threads.tasks import title_for

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture
def alice():
    org = make_org()
    user = make_user("alice", org)
    client = Client()
    client.force_login(user)
    return org, user, client


async def _signed_in_with_a_thread() -> tuple[AsyncClient, Thread]:
    org = await sync_to_async(make_org)()
    user = await sync_to_async(make_user)("alice", org)
    thread = await sync_to_async(make_thread)(org, user)
    client = AsyncClient()
    await sync_to_async(client.force_login)(user)
    return client, thread


async def _post(client: AsyncClient, view: str, code, content: str = "Hi"):
    """What the compose form (or a reply's regenerate button) posts, as htmx does."""
    return await client.post(
        reverse(view, args=[code]),
        {"content": content, "model": "demo:demo-chat"},
        headers={"HX-Request": "true"},
    )


def _record_starts(monkeypatch, record) -> None:
    """Call `record(request)` each time a reply's generation is started, then start it."""
    real_start = replies.start

    def start(message, request=None):
        record(request)
        return real_start(message, request)

    monkeypatch.setattr(replies, "start", start)


async def test_the_first_send_streams_a_reply_and_titles_the_thread(generations):
    client, thread = await _signed_in_with_a_thread()
    response = await _post(
        client, "threads:send", thread.code, "Please explain **Django** partials?"
    )
    assert response.status_code == 200
    assert 'class="skeleton"' in response.content.decode()
    await replies.wait_all()
    await tasks.wait_queued()  # the title job, queued once the reply had started
    reply = await Message.objects.aget(thread=thread, role="assistant")
    assert reply.status == "complete"
    thread = await Thread.objects.aget(pk=thread.pk)
    assert thread.title == "Explain Django partials"


async def test_a_send_does_not_wait_for_or_fail_with_the_title_job(
    generations, monkeypatch, caplog
):
    # The broker is down: handing over the title job fails, after the reply has started.
    client, thread = await _signed_in_with_a_thread()
    order = []

    def broker_down(thread_id):
        order.append("title queued")
        raise ConnectionError("broker unreachable")

    _record_starts(monkeypatch, lambda request: order.append("reply started"))
    monkeypatch.setattr(tasks.title_thread, "delay", broker_down)
    response = await _post(client, "threads:send", thread.code, "Hello there")
    assert response.status_code == 200
    await replies.wait_all()
    await tasks.wait_queued()
    assert order == ["reply started", "title queued"]
    reply = await Message.objects.aget(thread=thread, role="assistant")
    assert reply.status == "complete"
    assert "could not queue the title" in caplog.text


@pytest.mark.parametrize("view", ["threads:send", "threads:regenerate"])
async def test_a_page_send_starts_its_reply_with_the_whole_conversation(
    view, generations, monkeypatch
):
    # The send reads the conversation with its membership check (the regenerate reads it
    # after its save); either way the generation gets what reloading the row would give.
    client, thread = await _signed_in_with_a_thread()
    await sync_to_async(make_exchange)(thread, "First?", "First answer.")
    _, last = await sync_to_async(make_exchange)(thread, "Second?", "Second answer.")
    started = []
    _record_starts(monkeypatch, started.append)
    code = thread.code if view == "threads:send" else last.code
    assert (await _post(client, view, code, "Third?")).status_code == 200
    await replies.wait_all()
    reply = await Message.objects.select_related("thread__org").filter(role="assistant").alast()
    assert started == [await sync_to_async(replies.build_request)(reply)]
    question = "Third?" if view == "threads:send" else "Second?"
    assert [t.content for t in started[0].turns] == [
        "First?",
        "First answer.",
        "Second?",
        "Second answer.",
        question,
    ]


def test_title_for_strips_markup_and_filler():
    assert title_for("hey, can you write a `haiku` about #tests?") == "Write a haiku about tests"
    long = "word " * 40
    assert len(title_for(long)) <= 61 and title_for(long).endswith("…")


def test_a_final_reply_renders_markdown_and_never_markup(alice):
    org, user, client = alice
    thread = make_thread(org, user)
    payload = (
        "<img src=x onerror=alert(1)> <script>alert(2)</script> [x](javascript:alert(3))\n\n"
        "```python\nprint(1)\n```\n\n| a |\n|---|\n| 1 |\n\n[ok](https://example.com)"
    )
    make_exchange(thread, reply=payload)
    html = client.get(f"/t/{thread.code}/").content.decode()
    assert "<img" not in html and "<script>alert(2)" not in html
    assert 'href="javascript' not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert '<span class="code-lang">python</span>' in html and "<table>" in html
    assert (
        '<a href="https://example.com" target="_blank" rel="noopener noreferrer nofollow">ok</a>'
        in html
    )


def test_the_footer_names_the_fallback_model(alice):
    org, user, client = alice
    thread = make_thread(org, user)
    _, reply = make_exchange(thread)
    reply.model, reply.requested_model = "claude-haiku", "gpt-4o-mini"
    reply.total_tokens, reply.ttft_ms, reply.latency_ms = 42, 120, 900
    reply.save()
    html = client.get(f"/t/{thread.code}/").content.decode()
    assert "fallback from gpt-4o-mini" in html
    assert "42 tokens" in html and "TTFT 120 ms" in html and "900 ms" in html
    assert ">Regenerate</button>" in html


def test_the_picker_shows_tier_and_price_and_greys_unavailable(alice):
    org, user, client = alice
    thread = make_thread(org, user)
    html = client.get(f"/t/{thread.code}/").content.decode()
    assert "per M tokens" in html or "free" in html
    assert "disabled title=" in html  # providers without keys


def test_rename_archive_and_delete(alice):
    org, user, client = alice
    thread = make_thread(org, user, title="Old")
    client.post(f"/t/{thread.code}/rename", {"title": "  New   name "})
    thread.refresh_from_db()
    assert thread.title == "New name"
    client.post(f"/t/{thread.code}/archive")
    thread.refresh_from_db()
    assert thread.archived
    client.post(f"/t/{thread.code}/delete")
    assert not Thread.objects.filter(pk=thread.pk).exists()


def test_it_hides_other_organisations_threads(alice):
    _, _, client = alice
    other = make_thread(make_org("globex"), title="Secret")
    assert client.post(f"/t/{other.code}/rename", {"title": "x"}).status_code == 404
    assert client.get(f"/t/{other.code}/export.md").status_code == 404
    other.refresh_from_db()
    assert other.title == "Secret"


def test_search_finds_titles_and_message_text(alice):
    org, user, client = alice
    a = make_thread(org, user, title="Gardening")
    b = make_thread(org, user, title="Other")
    make_exchange(b, content="How do tomatoes grow?")
    html = client.get("/search", {"q": "tomatoes"}, headers={"HX-Request": "true"}).content
    assert str(b.code).encode() in html and str(a.code).encode() not in html
    assert b'id="thread-list"' in html and b"<html" not in html
    html = client.get("/search", {"q": "garden"}).content
    assert str(a.code).encode() in html and b"<html" in html


def test_export_markdown_and_json(alice):
    org, user, client = alice
    thread = make_thread(org, user, title="Export me")
    make_exchange(thread, content="Hi?", reply="**Hello**")
    md = client.get(f"/t/{thread.code}/export.md")
    assert md["Content-Disposition"].startswith('attachment; filename="export-me-')
    assert "# Export me" in md.content.decode() and "**Hello**" in md.content.decode()
    data = json.loads(client.get(f"/t/{thread.code}/export.json").content)
    assert [m["role"] for m in data["messages"]] == ["user", "assistant"]
    assert client.get(f"/t/{thread.code}/export.exe").status_code == 404


async def test_regenerate_asks_the_same_question_again(generations):
    org = await sync_to_async(make_org)()
    user = await sync_to_async(make_user)("alice", org)
    thread = await sync_to_async(make_thread)(org, user)
    _, reply = await sync_to_async(make_exchange)(thread, content="Again?")
    client = AsyncClient()
    await sync_to_async(client.force_login)(user)
    response = await client.post(f"/m/{reply.code}/regenerate", headers={"HX-Request": "true"})
    assert response.status_code == 200
    await replies.wait_all()
    questions = [m.content async for m in Message.objects.filter(thread=thread, role="user")]
    assert questions == ["Again?", "Again?"]


def _streaming_reply(heartbeat_age_s: float):
    from datetime import timedelta

    from django.utils import timezone

    from tests.factories import make_org, make_thread, make_user
    from threads.models import Message, add_exchange

    org = make_org("orphans")
    user = make_user("olive", org)
    thread = make_thread(org, user)
    _, reply, _ = add_exchange(thread, content="Hi", provider="demo", model="demo-chat")
    # No generation runs in this process for it: the one that streamed it is gone.
    Message.objects.filter(pk=reply.pk).update(
        status=Message.Status.STREAMING,
        content="Half an ans",
        heartbeat=timezone.now() - timedelta(seconds=heartbeat_age_s),
    )
    return user, thread, reply


@pytest.mark.django_db
def test_one_process_shows_a_reply_orphaned_by_a_restart_as_interrupted(client, settings):
    settings.REDIS_URL = ""  # one process: a reply it is not running has no other owner
    user, thread, reply = _streaming_reply(heartbeat_age_s=0)
    client.force_login(user)

    page = client.get(f"/t/{thread.code}/")

    reply.refresh_from_db()
    assert reply.status == "interrupted" and reply.content == "Half an ans"
    assert 'data-status="interrupted"' in page.content.decode()


@pytest.mark.django_db
def test_several_processes_end_only_replies_without_a_heartbeat(client, settings):
    settings.REDIS_URL = "redis://127.0.0.1:6379/0"  # another instance may be streaming it
    user, thread, reply = _streaming_reply(heartbeat_age_s=0)
    client.force_login(user)
    client.get(f"/t/{thread.code}/")
    reply.refresh_from_db()
    assert reply.status == "streaming"

    reply.heartbeat = reply.heartbeat - timedelta(minutes=5)
    reply.save(update_fields=["heartbeat"])
    client.get(f"/t/{thread.code}/")
    reply.refresh_from_db()
    assert reply.status == "interrupted"


@pytest.mark.parametrize("view", ["threads:send", "threads:regenerate"])
async def test_sending_needs_a_signed_in_person_and_saves_nothing_otherwise(view):
    org = await sync_to_async(make_org)()
    thread = await sync_to_async(make_thread)(org)
    _, reply = await sync_to_async(make_exchange)(thread, "Hi", "Hello!")
    code = thread.code if view == "threads:send" else reply.code
    before = await Message.objects.acount()
    response = await AsyncClient().post(
        reverse(view, args=[code]), {"content": "Hi", "model": "demo:demo-chat"}
    )
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))
    assert await Message.objects.acount() == before
