from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async

from tests.api_client import ApiClient
from tests.factories import make_api_key, make_exchange, make_org, make_thread
from threads.models import ApiKey, Message, Thread

pytestmark = [pytest.mark.django_db(transaction=True)]

SEND = {"content": "Hello", "provider": "demo", "model": "demo-chat"}


@pytest.fixture
async def tenants(generations):
    acme = await sync_to_async(make_org)("acme")
    globex = await sync_to_async(make_org)("globex")
    return {
        "acme": acme,
        "globex": globex,
        "acme_key": await sync_to_async(make_api_key)(acme),
        "globex_key": await sync_to_async(make_api_key)(globex),
        "acme_thread": await sync_to_async(make_thread)(acme, None, "Acme plans"),
        "globex_thread": await sync_to_async(make_thread)(globex, None, "Globex secrets"),
    }


async def test_it_requires_a_key(tenants):
    response = await ApiClient(None).get("/api/threads")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


async def test_it_rejects_an_unknown_or_revoked_key(tenants):
    assert (await ApiClient("sk-chat-nope").get("/api/threads")).status_code == 401
    await ApiKey.objects.filter(org=tenants["acme"]).aupdate(revoked="2026-01-01T00:00Z")
    response = await ApiClient(tenants["acme_key"]).get("/api/threads")
    assert response.status_code == 401
    assert "revoked" in response.json()["error"]["message"]


async def test_models_need_auth_too(tenants):
    assert (await ApiClient(None).get("/api/models")).status_code == 401


async def test_an_org_header_naming_another_org_is_forbidden(tenants):
    client = ApiClient(tenants["acme_key"], org="globex")
    response = await client.get("/api/threads")
    assert response.status_code == 403
    ok = await ApiClient(tenants["acme_key"], org="acme").get("/api/threads")
    assert ok.status_code == 200


async def test_it_lists_only_its_own_threads(tenants):
    response = await ApiClient(tenants["acme_key"]).get("/api/threads")
    titles = [t["title"] for t in response.json()["items"]]
    assert titles == ["Acme plans"]


async def test_another_orgs_thread_is_not_found(tenants):
    client = ApiClient(tenants["acme_key"])
    other = tenants["globex_thread"].code
    assert (await client.get(f"/api/threads/{other}")).status_code == 404
    assert (await client.get(f"/api/threads/{other}/messages")).status_code == 404
    assert (await client.patch(f"/api/threads/{other}", {"archived": True})).status_code == 404
    assert (await client.delete(f"/api/threads/{other}")).status_code == 404
    assert (await client.post(f"/api/threads/{other}/messages", SEND)).status_code == 404
    assert (await client.post(f"/api/threads/{other}/messages/stream", SEND)).status_code == 404
    assert await Message.objects.filter(thread=tenants["globex_thread"]).acount() == 0


async def test_another_orgs_message_cannot_be_cancelled(tenants):
    _, reply = await sync_to_async(make_exchange)(tenants["globex_thread"])
    response = await ApiClient(tenants["acme_key"]).post(f"/api/messages/{reply.code}/cancel")
    assert response.status_code == 404


async def test_it_creates_patches_archives_and_deletes_threads(tenants):
    client = ApiClient(tenants["acme_key"])
    created = await client.post("/api/threads", {"title": "Roadmap", "system_prompt": "Be brief."})
    assert created.status_code == 201
    code = created.json()["id"]
    patched = await client.patch(f"/api/threads/{code}", {"archived": True, "title": "Roadmap 2"})
    assert patched.json()["archived"] is True and patched.json()["title"] == "Roadmap 2"
    listed = await client.get("/api/threads")
    assert code not in [t["id"] for t in listed.json()["items"]]
    archived = await client.get("/api/threads?archived=true")
    assert code in [t["id"] for t in archived.json()["items"]]
    assert (await client.delete(f"/api/threads/{code}")).status_code == 204
    assert not await Thread.objects.filter(code=code).aexists()


async def test_thread_lists_are_paginated_with_a_cursor(tenants):
    for i in range(5):
        await sync_to_async(make_thread)(tenants["acme"], None, f"T{i}")
    client = ApiClient(tenants["acme_key"])
    first = (await client.get("/api/threads?limit=4")).json()
    assert len(first["items"]) == 4 and first["next_cursor"]
    second = (await client.get(f"/api/threads?limit=4&cursor={first['next_cursor']}")).json()
    assert len(second["items"]) == 2 and second["next_cursor"] is None
    ids = [t["id"] for t in first["items"] + second["items"]]
    assert len(set(ids)) == 6


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"provider": "demo", "model": "demo-chat"}, "content"),
        ({"content": "", "provider": "demo", "model": "demo-chat"}, "content"),
        ({"content": "   ", "provider": "demo", "model": "demo-chat"}, "content"),
        ({"content": 5, "provider": "demo", "model": "demo-chat"}, "content"),
        ({"content": "x" * 32_001, "provider": "demo", "model": "demo-chat"}, "content"),
        ({"content": "hi", "provider": "nope", "model": "demo-chat"}, "provider"),
        ({"content": "hi", "provider": "demo", "model": "demo-chaat"}, "model"),
        ({"content": "hi", "role": "assistant", "provider": "demo", "model": "demo-chat"}, "role"),
        (
            {"content": "hi", "provider": "demo", "model": "demo-chat", "client_id": "x" * 65},
            "client_id",
        ),
    ],
)
async def test_bad_input_is_a_422_naming_the_field(tenants, body, field):
    client = ApiClient(tenants["acme_key"])
    thread = tenants["acme_thread"]
    for path in ("messages", "messages/stream"):
        response = await client.post(f"/api/threads/{thread.code}/{path}", body)
        assert response.status_code == 422, response.content
        assert response.json()["error"]["field"] == field
    assert await Message.objects.filter(thread=thread).acount() == 0


async def test_unknown_model_lists_the_closest_ids(tenants):
    client = ApiClient(tenants["acme_key"])
    response = await client.post(
        f"/api/threads/{tenants['acme_thread'].code}/messages",
        {"content": "hi", "provider": "demo", "model": "demo-chaat"},
    )
    assert "demo-chat" in response.json()["error"]["message"]


async def test_malformed_json_is_a_4xx_json_error(tenants):
    client = ApiClient(tenants["acme_key"])
    response = await client.post(
        f"/api/threads/{tenants['acme_thread'].code}/messages", "{not json", raw=True
    )
    assert 400 <= response.status_code < 500
    assert "error" in response.json()


async def test_an_unavailable_provider_is_refused_before_sending(tenants, settings):
    settings.LLM_PROVIDERS = {
        **settings.LLM_PROVIDERS,
        "openai": {"api_key": "", "base_url": "http://127.0.0.1:9"},
    }
    client = ApiClient(tenants["acme_key"])
    response = await client.post(
        f"/api/threads/{tenants['acme_thread'].code}/messages",
        {"content": "hi", "provider": "openai", "model": "gpt-4o-mini"},
    )
    assert response.status_code == 422
    assert "OPENAI_API_KEY" in response.json()["error"]["message"]


async def test_the_blocking_send_returns_both_messages(tenants):
    client = ApiClient(tenants["acme_key"])
    response = await client.post(f"/api/threads/{tenants['acme_thread'].code}/messages", SEND)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["user_message"]["content"] == "Hello"
    reply = body["assistant_message"]
    assert reply["status"] == "complete"
    assert reply["content"].startswith("You said")
    assert reply["usage"]["total_tokens"] > 0
    assert reply["cost_usd"] == "0" and reply["priced"] is True
    assert reply["provider"] == "demo" and reply["ttft_ms"] is not None


async def test_a_repeated_client_id_creates_one_reply(tenants):
    client = ApiClient(tenants["acme_key"])
    path = f"/api/threads/{tenants['acme_thread'].code}/messages"
    first = (await client.post(path, {**SEND, "client_id": "abc"})).json()
    again = (await client.post(path, {**SEND, "client_id": "abc"})).json()
    assert first["assistant_message"]["id"] == again["assistant_message"]["id"]
    assert await Message.objects.filter(thread=tenants["acme_thread"]).acount() == 2


async def test_the_conversation_is_sent_whole(tenants):
    client = ApiClient(tenants["acme_key"])
    thread = tenants["acme_thread"]
    path = f"/api/threads/{thread.code}/messages"
    await client.post(path, {**SEND, "content": "First question"})
    await client.post(path, {**SEND, "content": "Second question"})
    from threads.replies import build_request

    reply = await Message.objects.select_related("thread__org").filter(role="assistant").alast()
    request = await sync_to_async(build_request)(reply)
    assert [t.role for t in request.turns] == ["user", "assistant", "user"]
    assert request.turns[0].content == "First question"
    assert request.system


async def test_messages_are_listed_in_order(tenants):
    client = ApiClient(tenants["acme_key"])
    thread = tenants["acme_thread"]
    await client.post(f"/api/threads/{thread.code}/messages", SEND)
    listed = (await client.get(f"/api/threads/{thread.code}/messages")).json()
    assert [m["role"] for m in listed["items"]] == ["user", "assistant"]


async def test_models_are_listed_with_availability(tenants):
    response = await ApiClient(tenants["acme_key"]).get("/api/models")
    models = response.json()
    demo = next(m for m in models if m["provider"] == "demo")
    assert demo["available"] is True and demo["unavailable_reason"] == ""
    keys = {
        "provider",
        "id",
        "display_name",
        "available",
        "unavailable_reason",
        "tier",
        "input_per_mtok",
        "output_per_mtok",
        "context_window",
        "capabilities",
        "status",
    }
    assert keys <= set(demo)


async def test_cancelling_a_finished_reply_returns_its_status(tenants):
    _, reply = await sync_to_async(make_exchange)(tenants["acme_thread"])
    response = await ApiClient(tenants["acme_key"]).post(f"/api/messages/{reply.code}/cancel")
    assert response.json() == {"message_id": str(reply.code), "status": "complete"}
