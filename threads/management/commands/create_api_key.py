from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from threads.models import ApiKey, Organization


class Command(BaseCommand):
    help = "Create an API key for an organisation; the key is printed alone on the last line."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--org", required=True, help="Organisation slug.")
        parser.add_argument("--name", default="")

    def handle(self, *args: Any, org: str, name: str, **options: Any) -> str:
        organization = Organization.objects.filter(slug=org).first()
        if organization is None:
            raise CommandError(f"No organisation {org!r}.")
        key, raw = ApiKey.issue(organization, name)
        if options["verbosity"] > 0:
            self.stderr.write(f"Key {key.prefix}… for {org}; it is shown once, store it now.")
        return raw
