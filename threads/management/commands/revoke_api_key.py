from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from threads.models import ApiKey


class Command(BaseCommand):
    help = "Revoke an API key by its prefix (as shown in the admin)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("prefix")

    def handle(self, *args: Any, prefix: str, **options: Any) -> str:
        key = ApiKey.objects.filter(prefix=prefix).first()
        if key is None:
            raise CommandError(f"No API key with prefix {prefix!r}.")
        if key.revoked is not None:
            return f"{prefix} was already revoked"
        key.revoked = timezone.now()
        key.save(update_fields=["revoked"])
        return f"revoked {prefix}"
