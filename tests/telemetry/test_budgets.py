from __future__ import annotations

from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.urls import reverse

from telemetry.budgets import budget_refusal, budget_status
from telemetry.models import Budget
from tests.api_client import ApiClient
from tests.factories import make_api_key, make_call, make_org, make_thread, make_user
from threads.models import Message


@pytest.mark.django_db
def test_no_budget_means_no_limit():
    org = make_org()
    make_call(org, cost_usd=Decimal("5"))
    status = budget_status(org)
    assert (status.spent, status.limit, status.level) == (Decimal("5"), None, "none")
    assert budget_refusal(org) == ""


@pytest.mark.django_db
def test_levels():
    org = make_org()
    Budget.objects.create(org=org, monthly_usd=Decimal("10"))
    make_call(org, cost_usd=Decimal("7.99"))
    assert budget_status(org).level == "ok"
    make_call(org, cost_usd=Decimal("0.01"))
    assert (budget_status(org).percent, budget_status(org).level) == (80, "warn")
    assert budget_refusal(org) == ""
    make_call(org, cost_usd=Decimal("2"))
    assert budget_status(org).level == "over"
    assert "monthly budget" in budget_refusal(org)


@pytest.mark.django_db
def test_the_page_refuses_at_100_percent_and_warns_from_80(client):
    org = make_org()
    user = make_user("alice", org)
    thread = make_thread(org, user)
    Budget.objects.create(org=org, monthly_usd=Decimal("1"))
    make_call(org, cost_usd=Decimal("0.85"))
    client.force_login(user)
    page = client.get(reverse("threads:detail", args=[thread.code])).content.decode()
    assert (
        "85 % of this month&#x27;s budget is used" in page or "85 % of this month's budget" in page
    )
    make_call(org, cost_usd=Decimal("0.15"))
    response = client.post(
        reverse("threads:send", args=[thread.code]),
        {"content": "Hi", "model": "demo:demo-chat"},
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 422
    assert "monthly budget" in response.content.decode()
    assert not Message.objects.exists()


@pytest.mark.django_db(transaction=True)
async def test_the_api_refuses_with_403_budget_exceeded(generations):
    org = await sync_to_async(make_org)()
    thread = await sync_to_async(make_thread)(org)
    key = await sync_to_async(make_api_key)(org)
    await Budget.objects.acreate(org=org, monthly_usd=Decimal("1"))
    await sync_to_async(make_call)(org, cost_usd=Decimal("1"))
    response = await ApiClient(key).post(
        f"/api/threads/{thread.code}/messages",
        {"content": "Hello", "provider": "demo", "model": "demo-chat"},
    )
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "budget_exceeded"
    assert error["field"] == "budget"
    # An admin raises the budget: sending works again.
    await Budget.objects.filter(org=org).aupdate(monthly_usd=Decimal("5"))
    response = await ApiClient(key).post(
        f"/api/threads/{thread.code}/messages",
        {"content": "Hello", "provider": "demo", "model": "demo-chat"},
    )
    assert response.status_code < 300
