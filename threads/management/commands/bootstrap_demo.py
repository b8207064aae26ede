from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from threads.models import Membership, Organization

DEFAULT_DEMO_PASSWORD = "demo-password"


class Command(BaseCommand):
    help = "Create the demo organisation (demo-org) and the demo user, if they are missing."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default=settings.DEMO_USER)
        parser.add_argument("--password", default=settings.DEMO_PASSWORD)

    def handle(self, *args: Any, username: str, password: str, **options: Any) -> str:
        if not password:
            if not settings.DEBUG:
                raise CommandError(
                    "DEBUG is off: give the demo user a password (DEMO_PASSWORD or --password)."
                )
            password = DEFAULT_DEMO_PASSWORD
        org, _ = Organization.objects.get_or_create(slug="demo-org", defaults={"name": "Demo org"})
        User = get_user_model()
        user = User.objects.filter(username=username).first()
        if user is None:
            user = User.objects.create_user(username=username, password=password, is_staff=True)
            created = "created"
        else:
            created = "exists"
        Membership.objects.get_or_create(
            user=user, org=org, defaults={"role": Membership.Role.OWNER}
        )
        return f"demo-org and user {username!r} ({created})"
