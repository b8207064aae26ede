from __future__ import annotations

from django.db import migrations


def sync_catalog(apps, schema_editor):  # type: ignore[no-untyped-def]
    # The same code as `manage.py sync_models`, so `migrate` alone gives a full catalog.
    # It only touches fields that exist in 0001; later migrations that rename them must
    # replace this with a frozen copy.
    from providers.catalog import sync_from_file

    sync_from_file(apps.get_model("providers", "CatalogModel"))


class Migration(migrations.Migration):
    dependencies = [("providers", "0001_initial")]

    operations = [migrations.RunPython(sync_catalog, migrations.RunPython.noop)]
