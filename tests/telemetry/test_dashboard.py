from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from telemetry import rollups
from tests.factories import make_call, make_org, make_user

pytestmark = [pytest.mark.django_db]

URL = reverse("admin:telemetry_dashboard_changelist")


def _staff(username: str, org, role: str = "admin"):
    user = make_user(username, org, role)
    user.is_staff = True
    user.save()
    return user


@pytest.fixture
def data():
    acme, globex = make_org("acme"), make_org("globex")
    now = timezone.now()
    make_call(acme, started=now - timedelta(minutes=5), model="acme-model", ttft_ms=400)
    make_call(
        acme,
        started=now - timedelta(minutes=6),
        model="acme-model",
        outcome="error",
        error_class="server_error",
        final=False,
    )
    make_call(
        globex,
        started=now - timedelta(minutes=5),
        model="globex-model",
        priced=False,
        cost_usd=None,
    )
    rollups.fold_pending()
    return {"acme": acme, "globex": globex}


def test_it_renders_for_a_superuser(client, data, django_user_model):
    admin = django_user_model.objects.create_superuser("root", password="x")
    client.force_login(admin)
    response = client.get(URL)
    assert response.status_code == 200
    body = response.content.decode()
    assert "acme-model" in body and "globex-model" in body
    assert "TTFT P95" in body and "Uptime" in body
    assert "<svg" in body
    assert "1 attempt of unpriced models" in body
    assert "server_error" in body


def test_an_org_admin_sees_only_their_organisation(client, data):
    client.force_login(_staff("carol", data["acme"]))
    response = client.get(URL, {"range": "7d"})
    assert response.status_code == 200
    body = response.content.decode()
    assert "acme-model" in body
    assert "globex-model" not in body
    # Naming another organisation in the filter shows nothing of it either.
    assert "globex-model" not in client.get(URL, {"org": "globex"}).content.decode()


def test_members_are_turned_away(client, data):
    member = make_user("bob", data["acme"], "member")
    client.force_login(member)
    response = client.get(URL)
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]
    # Staff without an admin role in any organisation may not see it either.
    client.force_login(_staff("dave", data["acme"], role="member"))
    assert client.get(URL).status_code == 403


def test_filters_and_custom_ranges(client, data, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("root", password="x"))
    # From the data's own day (minutes ago: yesterday, just after midnight) to today.
    start = timezone.localdate(timezone.now() - timedelta(minutes=10)).isoformat()
    today = timezone.localdate().isoformat()
    response = client.get(
        URL, {"range": "custom", "start": start, "end": today, "model": "acme-model"}
    )
    assert response.status_code == 200
    body = response.content.decode()
    assert "acme-model" in body and "globex-model</td>" not in body
    assert client.get(URL, {"range": "30d", "provider": "demo"}).status_code == 200


def test_embedded_default_folds_on_read(client, django_user_model, settings):
    settings.CELERY_TASK_ALWAYS_EAGER = True
    make_call(make_org(), started=timezone.now(), model="fresh-model")
    client.force_login(django_user_model.objects.create_superuser("root", password="x"))
    assert "fresh-model" in client.get(URL).content.decode()
