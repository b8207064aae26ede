from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.text import slugify

from threads.models import Membership, Organization


class Command(BaseCommand):
    help = "Create an organisation (a tenant), optionally with an owner."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug")
        parser.add_argument("--name", default="")
        parser.add_argument("--owner", default="", help="Username to make its owner.")

    def handle(self, *args: Any, slug: str, name: str, owner: str, **options: Any) -> str:
        if slugify(slug) != slug:
            raise CommandError(
                f"{slug!r} is not a slug: use lowercase letters, digits and hyphens."
            )
        if Organization.objects.filter(slug=slug).exists():
            raise CommandError(f"Organisation {slug!r} already exists.")
        org = Organization.objects.create(slug=slug, name=name or slug)
        if owner:
            user = get_user_model().objects.filter(username=owner).first()
            if user is None:
                raise CommandError(f"No user {owner!r}.")
            Membership.objects.create(user=user, org=org, role=Membership.Role.OWNER)
        return f"created organisation {slug}"
