from __future__ import annotations

import json
from decimal import Decimal
from io import StringIO
from types import SimpleNamespace

import pytest
from django.contrib.admin.sites import AdminSite
from django.core.management import call_command

from providers import catalog
from providers.admin import CatalogModelAdmin
from providers.base import Usage
from providers.catalog import CATALOG_PATH, UnknownModelError, get_model
from providers.models import CatalogModel

PRICES_PATH = "/work/shared/data/model-prices.json"


@pytest.fixture(autouse=True)
def _fresh_cache():
    catalog.clear_cache()
    yield
    catalog.clear_cache()


def test_the_file_lists_the_required_models():
    data = json.loads(CATALOG_PATH.read_text())
    required = {
        "perplexity": ["sonar", "sonar-pro", "sonar-reasoning", "sonar-reasoning-pro"],
        "openai": ["gpt-4o-mini", "gpt-4o", "gpt-4-turbo", "gpt-3.5-turbo"],
        "gemini": ["gemini-2.0-flash-exp", "gemini-1.5-flash", "gemini-1.5-pro", "gemini-pro"],
        "demo": ["demo-chat"],
    }
    for provider, ids in required.items():
        assert set(ids) <= set(data[provider]), provider
    tiers = {entry["tier"] for entry in data["openrouter"].values()}
    assert tiers == {"free", "paid"}


def test_every_price_cites_its_source():
    for (provider, model), fields in catalog.file_entries().items():
        assert fields["source"], f"{provider}:{model} has no source"
        if fields["input_per_mtok"] is None:
            assert fields["tier"] == "paid", f"unpriced {provider}:{model} must not be free"


def test_prices_match_model_prices_json():
    try:
        with open(PRICES_PATH) as f:
            prices = json.load(f)
    except OSError:
        pytest.skip("shared price file not present")
    entries = catalog.file_entries()
    for provider, models in prices.items():
        for model_id, price in models.items():
            entry = entries[(provider, model_id)]
            assert entry["input_per_mtok"] == Decimal(str(price["input_per_mtok"]))
            assert entry["output_per_mtok"] == Decimal(str(price["output_per_mtok"]))
            assert price["source"] in entry["source"]


@pytest.mark.django_db
def test_migrate_alone_loads_the_catalog():
    assert CatalogModel.objects.filter(provider="openai", model="gpt-4o-mini").exists()
    assert CatalogModel.objects.count() == len(catalog.file_entries())


@pytest.mark.django_db
def test_prices_and_tiers_load():
    mini = get_model("openai", "gpt-4o-mini")
    assert (mini.input_per_mtok, mini.output_per_mtok) == (Decimal("0.15"), Decimal("0.6"))
    assert mini.tier == "paid" and mini.priced and not mini.free
    assert mini.cost(Usage(prompt_tokens=1_000_000, completion_tokens=500_000)) == Decimal("0.45")
    assert "model-prices.json" in mini.source
    assert "citations" in get_model("perplexity", "sonar-pro").capabilities
    assert "reasoning" in get_model("perplexity", "sonar-reasoning-pro").capabilities
    demo = get_model("demo", "demo-chat")
    assert demo.free and demo.price_label == "free"
    free = get_model("openrouter", "meta-llama/llama-3.3-70b-instruct:free")
    assert free.tier == "free" and free.rpm == 20
    assert get_model("openai", "gpt-4o").fallbacks[0] == "openai:gpt-4.1"


@pytest.mark.django_db
def test_an_unpriced_model_is_flagged_and_never_free():
    old = get_model("openai", "gpt-3.5-turbo")
    assert not old.priced and not old.free
    assert old.cost(Usage(prompt_tokens=10, completion_tokens=10)) is None
    assert old.price_label == "unpriced"
    assert old.tier == "paid"


@pytest.mark.django_db
def test_a_deprecated_model_still_answers_with_a_warning():
    old = get_model("gemini", "gemini-1.5-flash")
    assert old.deprecated
    assert old.warning == (
        "Gemini 1.5 Flash (gemini-1.5-flash) is deprecated and may stop working. "
        "Try gemini-2.5-flash instead."
    )
    assert get_model("openai", "gpt-4o").warning == ""


@pytest.mark.django_db
def test_an_unknown_model_is_rejected_with_suggestions():
    with pytest.raises(UnknownModelError) as info:
        get_model("openai", "gpt4o-mini")
    assert info.value.suggestions[0] == "gpt-4o-mini"
    assert "Did you mean gpt-4o-mini" in str(info.value)
    with pytest.raises(UnknownModelError) as info:
        get_model("perplexity", "sonar-large")
    assert "sonar" in info.value.suggestions
    with pytest.raises(UnknownModelError, match="There is no provider"):
        get_model("mistral", "large")


@pytest.mark.django_db
def test_openrouter_ids_are_validated():
    assert get_model("openrouter", "openai/gpt-4o-mini").priced
    floor = get_model("openrouter", "openai/gpt-4o-mini:floor")
    assert floor.input_per_mtok == Decimal("0.15") and not floor.listed
    for bad in ("gpt-4o-mini", "openai/", "/gpt-4o", "openai/gpt 4o", "a/b/c"):
        with pytest.raises(UnknownModelError, match="author/slug"):
            get_model("openrouter", bad)
    with pytest.raises(UnknownModelError, match="Unknown OpenRouter variant"):
        get_model("openrouter", "openai/gpt-4o-mini:turbo")
    # Well formed but unknown: rejected like any unknown model, with suggestions.
    with pytest.raises(UnknownModelError) as info:
        get_model("openrouter", "openai/gpt-4o-mimi")
    assert info.value.suggestions[0] == "openai/gpt-4o-mini"
    # `:free` is its own offering: only listed free variants exist.
    with pytest.raises(UnknownModelError):
        get_model("openrouter", "openai/gpt-4o-mini:free")


@pytest.mark.django_db
def test_any_model_is_valid_for_an_openai_compatible_server():
    info = get_model("openai_compat", "qwen2.5-coder:32b")
    assert info.id == "qwen2.5-coder:32b"
    assert not info.priced and info.price_label == "unpriced"
    with pytest.raises(UnknownModelError):
        get_model("openai_compat", " ")


@pytest.mark.django_db
def test_a_priced_compat_model_added_in_the_admin_wins():
    CatalogModel.objects.create(
        provider="openai_compat",
        model="llama3.2",
        display_name="Llama 3.2 (ours)",
        input_per_mtok=Decimal("0"),
        output_per_mtok=Decimal("0"),
        tier="free",
    )
    assert get_model("openai_compat", "llama3.2").free


@pytest.mark.django_db
def test_reads_are_cached_and_saves_clear_the_cache(django_assert_num_queries):
    get_model("openai", "gpt-4o")
    with django_assert_num_queries(0):
        get_model("openai", "gpt-4o")
        catalog.list_models()
    row = CatalogModel.objects.get(provider="openai", model="gpt-4o")
    row.input_per_mtok = Decimal("2")
    row.save()
    assert get_model("openai", "gpt-4o").input_per_mtok == Decimal("2")


@pytest.mark.django_db
def test_the_cache_expires(settings, django_assert_num_queries):
    settings.CATALOG_CACHE_TTL_S = 0
    get_model("openai", "gpt-4o")
    with django_assert_num_queries(1):
        get_model("openai", "gpt-4o")


@pytest.mark.django_db
def test_an_empty_table_falls_back_to_the_file():
    CatalogModel.objects.all().delete()
    assert get_model("openai", "gpt-4o-mini").input_per_mtok == Decimal("0.15")
    assert not catalog._snapshot.from_db


def _edit_in_admin(row: CatalogModel, **changes) -> None:
    for name, value in changes.items():
        setattr(row, name, value)
    form = SimpleNamespace(changed_data=list(changes))
    CatalogModelAdmin(CatalogModel, AdminSite()).save_model(None, row, form, change=True)


@pytest.mark.django_db
def test_sync_models_does_not_clobber_admin_edits():
    row = CatalogModel.objects.get(provider="openai", model="gpt-4o")
    _edit_in_admin(row, input_per_mtok=Decimal("3.00"))
    assert row.edited_fields == ["input_per_mtok"]
    # Someone also changed an unedited field behind the admin's back.
    CatalogModel.objects.filter(pk=row.pk).update(output_per_mtok=Decimal("99"), display_name="X")

    out = StringIO()
    call_command("sync_models", stdout=out)
    assert "1 updated" in out.getvalue()
    assert "1 with admin edits kept" in out.getvalue()

    row.refresh_from_db()
    assert row.input_per_mtok == Decimal("3.00")  # the admin's price stays
    assert row.output_per_mtok == Decimal("10")  # the file's price comes back
    assert row.display_name == "GPT-4o"
    assert get_model("openai", "gpt-4o").input_per_mtok == Decimal("3.00")


@pytest.mark.django_db
def test_sync_models_skips_locked_rows_and_keeps_admin_rows():
    CatalogModel.objects.filter(provider="openai", model="gpt-4o-mini").update(
        locked=True, display_name="Ours"
    )
    CatalogModel.objects.create(provider="openrouter", model="x-ai/grok-4", display_name="Grok")
    CatalogModel.objects.filter(provider="openai", model="gpt-4.1").delete()

    out = StringIO()
    call_command("sync_models", stdout=out)
    assert "1 created" in out.getvalue() and "1 locked" in out.getvalue()
    assert CatalogModel.objects.get(model="gpt-4o-mini").display_name == "Ours"
    assert CatalogModel.objects.filter(model="x-ai/grok-4").exists()
    assert CatalogModel.objects.filter(model="gpt-4.1").exists()


@pytest.mark.django_db
def test_a_second_sync_changes_nothing():
    result = catalog.sync_from_file()
    assert (result.created, result.updated) == (0, 0)
    assert result.unchanged == len(catalog.file_entries())


async def test_aget_model_reads_without_a_database(monkeypatch):
    monkeypatch.setattr(catalog, "_db_rows", lambda: [])
    info = await catalog.aget_model("perplexity", "sonar")
    assert info.display_name == "Sonar"
    assert len(await catalog.alist_models("perplexity")) >= 4
    with pytest.raises(UnknownModelError):
        await catalog.aget_model("perplexity", "sonnar-pro")
