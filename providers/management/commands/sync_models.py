from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from providers.catalog import CATALOG_PATH, sync_from_file


class Command(BaseCommand):
    help = (
        "Copy providers/catalog.json into the model catalog table. Fields edited in the admin "
        "and locked rows are left alone."
    )

    def handle(self, *args: Any, **options: Any) -> str:
        result = sync_from_file()
        if options["verbosity"] > 1:
            self.stdout.write(f"Read {CATALOG_PATH}")
        return f"Catalog synced: {result}."
