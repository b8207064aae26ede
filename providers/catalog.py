"""The model catalog: names, prices, tiers, context windows, fallbacks and limits.

Interface used by the other apps (keep it stable):
- `ModelInfo`, `UnknownModelError(provider, model, suggestions)`
- `get_model(provider, model)` / `aget_model(...)` -> ModelInfo, raising UnknownModelError
- `list_models()` / `alist_models()` -> list[ModelInfo]
- `ModelInfo.cost(usage)` -> Decimal | None (None when unpriced), `ModelInfo.priced`

`catalog.json` is the source; `sync_models` (and the data migration) copies it into the
`CatalogModel` table, where admins edit prices. Reads come from the table through a short
in-process cache, so the hot path does not query per request; a fresh database whose table is
still empty (or missing) reads the file instead.
"""

from __future__ import annotations

import datetime
import difflib
import json
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from .base import Usage

CATALOG_PATH = Path(__file__).with_name("catalog.json")
MTOK = Decimal(1_000_000)

# Providers whose model list lives on the server they point at: any id is valid for them.
OPEN_MODEL_PROVIDERS = frozenset({"openai_compat"})

# OpenRouter ids are `author/slug` with an optional `:variant` [provider-protocols.md §5].
OPENROUTER_VARIANTS = frozenset(
    {"free", "floor", "nitro", "online", "thinking", "exacto", "extended", "beta"}
)
_OPENROUTER_ID = re.compile(
    r"(?P<base>[a-z0-9][a-z0-9._-]*/[a-z0-9][a-z0-9._-]*)(?::(?P<variant>[a-z]+))?",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    provider: str
    id: str
    display_name: str
    context_window: int | None = None
    input_per_mtok: Decimal | None = None
    output_per_mtok: Decimal | None = None
    tier: str = "paid"
    capabilities: tuple[str, ...] = ("streaming",)
    status: str = "current"
    source: str = ""
    max_output_tokens: int | None = None
    deprecation_date: datetime.date | None = None
    replacement: str = ""
    notes: str = ""
    fallbacks: tuple[str, ...] = ()  # "provider:model", tried in order
    rpm: int | None = None
    concurrency: int | None = None
    listed: bool = True  # False for ids the catalog accepts without knowing them

    def __str__(self) -> str:
        return f"{self.provider}:{self.id}"

    @property
    def priced(self) -> bool:
        return self.input_per_mtok is not None and self.output_per_mtok is not None

    @property
    def free(self) -> bool:
        """Only a model priced at zero is free; an unpriced one never is."""
        return self.priced and self.input_per_mtok == 0 and self.output_per_mtok == 0

    @property
    def deprecated(self) -> bool:
        if self.status == "deprecated":
            return True
        return self.deprecation_date is not None and self.deprecation_date <= datetime.date.today()

    @property
    def warning(self) -> str:
        """A sentence to show next to a reply from this model, or ''."""
        if not self.deprecated:
            return ""
        instead = f" Try {self.replacement} instead." if self.replacement else ""
        return f"{self.display_name} ({self.id}) is deprecated and may stop working.{instead}"

    @property
    def price_label(self) -> str:
        """How to show the price wherever cost is shown; unpriced is never 'free'."""
        if not self.priced:
            return "unpriced"
        if self.free:
            return "free"
        return f"${self.input_per_mtok:f} in / ${self.output_per_mtok:f} out per 1M tokens"

    def cost(self, usage: Usage) -> Decimal | None:
        if self.input_per_mtok is None or self.output_per_mtok is None:
            return None
        return (
            usage.prompt_tokens * self.input_per_mtok
            + usage.completion_tokens * self.output_per_mtok
        ) / MTOK


class UnknownModelError(LookupError):
    def __init__(
        self, provider: str, model: str, suggestions: list[str], *, reason: str = ""
    ) -> None:
        self.provider = provider
        self.model = model
        self.suggestions = suggestions
        self.reason = reason
        why = f" {reason}" if reason else ""
        hint = f" Did you mean {', '.join(suggestions)}?" if suggestions else ""
        super().__init__(f"Unknown model {model!r} for provider {provider!r}.{why}{hint}")


# --- Reading the file ------------------------------------------------------------------------


def _decimal(value: object) -> Decimal | None:
    return None if value is None or value == "" else Decimal(str(value))


def _date(value: object) -> datetime.date | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime.date):
        return value
    return datetime.date.fromisoformat(str(value))


@cache
def file_entries() -> dict[tuple[str, str], dict[str, Any]]:
    """catalog.json as {(provider, model): fields}, with the value types the table uses."""
    data = json.loads(CATALOG_PATH.read_text())
    entries: dict[tuple[str, str], dict[str, Any]] = {}
    for provider, models in data.items():
        if provider.startswith("_"):
            continue
        for model_id, raw in models.items():
            input_price = _decimal(raw.get("input_per_mtok"))
            output_price = _decimal(raw.get("output_per_mtok"))
            entries[(provider, model_id)] = {
                "display_name": raw.get("display_name") or model_id,
                "context_window": raw.get("context_window"),
                "max_output_tokens": raw.get("max_output_tokens"),
                "input_per_mtok": input_price,
                "output_per_mtok": output_price,
                "tier": raw.get("tier", "paid"),
                "capabilities": list(raw.get("capabilities", ["streaming"])),
                "status": raw.get("status", "current"),
                "deprecation_date": _date(raw.get("deprecation_date")),
                "replacement": raw.get("replacement", ""),
                "source": raw.get("source", ""),
                "notes": raw.get("notes", ""),
                "fallbacks": list(raw.get("fallbacks", [])),
                "rpm": raw.get("rpm"),
                "concurrency": raw.get("concurrency"),
            }
    return entries


def _info(provider: str, model_id: str, fields: dict[str, Any]) -> ModelInfo:
    return ModelInfo(
        provider=provider,
        id=model_id,
        display_name=fields["display_name"] or model_id,
        context_window=fields["context_window"],
        input_per_mtok=_decimal(fields["input_per_mtok"]),
        output_per_mtok=_decimal(fields["output_per_mtok"]),
        tier=fields["tier"],
        capabilities=tuple(fields["capabilities"] or ()),
        status=fields["status"],
        source=fields["source"],
        max_output_tokens=fields["max_output_tokens"],
        deprecation_date=_date(fields["deprecation_date"]),
        replacement=fields["replacement"] or "",
        notes=fields["notes"] or "",
        fallbacks=tuple(fields["fallbacks"] or ()),
        rpm=fields["rpm"],
        concurrency=fields["concurrency"],
    )


# --- The cached snapshot --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Snapshot:
    loaded_at: float
    models: dict[tuple[str, str], ModelInfo]
    from_db: bool


_snapshot: _Snapshot | None = None
_lock = threading.Lock()


def clear_cache() -> None:
    """Forget the snapshot; the next read loads the table (or the file) again."""
    global _snapshot
    _snapshot = None
    file_entries.cache_clear()


def _ttl() -> float:
    return float(getattr(settings, "CATALOG_CACHE_TTL_S", 30.0))


def _db_rows() -> list[tuple[str, str, dict[str, Any]]]:
    from .models import SYNCED_FIELDS, CatalogModel

    rows = []
    for row in CatalogModel.objects.all():
        rows.append((row.provider, row.model, {f: getattr(row, f) for f in SYNCED_FIELDS}))
    return rows


def _fresh() -> _Snapshot | None:
    snap = _snapshot
    if snap is not None and time.monotonic() - snap.loaded_at < _ttl():
        return snap
    return None


def _load() -> dict[tuple[str, str], ModelInfo]:
    global _snapshot
    snap = _fresh()
    if snap is not None:
        return snap.models
    with _lock:
        try:
            rows = _db_rows()
        except DatabaseError:
            rows = []  # no table yet (before migrate): the file still answers
        if rows:
            models = {(p, m): _info(p, m, f) for p, m, f in rows}
        else:
            models = {(p, m): _info(p, m, f) for (p, m), f in file_entries().items()}
        _snapshot = _Snapshot(time.monotonic(), models, from_db=bool(rows))
        return models


# --- Lookups -----------------------------------------------------------------------------


def _known_providers() -> tuple[str, ...]:
    from .registry import PROVIDER_IDS

    return PROVIDER_IDS


def _suggest(model: str, ids: Iterable[str], n: int = 3) -> list[str]:
    ids = list(ids)
    close = difflib.get_close_matches(model, ids, n=n, cutoff=0.6)
    if not close:
        close = difflib.get_close_matches(model, ids, n=n, cutoff=0.3)
    return close


def _lookup(models: dict[tuple[str, str], ModelInfo], provider: str, model: str) -> ModelInfo:
    info = models.get((provider, model))
    if info is not None:
        return info
    if provider not in _known_providers() and not any(p == provider for p, _ in models):
        raise UnknownModelError(
            provider,
            model,
            [],
            reason=f"There is no provider {provider!r}; use one of {', '.join(_known_providers())}.",
        )
    ids = [m for (p, m) in models if p == provider]
    if provider in OPEN_MODEL_PROVIDERS:
        if not model.strip():
            raise UnknownModelError(provider, model, [], reason="The model id is empty.")
        return ModelInfo(
            provider=provider,
            id=model,
            display_name=model,
            source="listed by the OpenAI-compatible server; unpriced unless an admin adds it",
            listed=False,
        )
    if provider == "openrouter":
        match = _OPENROUTER_ID.fullmatch(model)
        if match is None:
            raise UnknownModelError(
                provider,
                model,
                _suggest(model, ids),
                reason="OpenRouter ids look like author/slug or author/slug:variant.",
            )
        variant = (match["variant"] or "").lower()
        if variant and variant not in OPENROUTER_VARIANTS:
            raise UnknownModelError(
                provider,
                model,
                _suggest(model, ids),
                reason=f"Unknown OpenRouter variant ':{variant}'; known: "
                + ", ".join(sorted(OPENROUTER_VARIANTS))
                + ".",
            )
        base = models.get((provider, match["base"]))
        # A routing variant of a listed model costs at most the listed price; `:free` is a
        # different offering with its own limits, so it must be listed itself.
        if base is not None and variant and variant != "free":
            return replace(
                base,
                id=model,
                display_name=f"{base.display_name} ({variant})",
                notes=f"routing variant of {base.id}; priced at its list price",
                listed=False,
            )
    raise UnknownModelError(provider, model, _suggest(model, ids))


def get_model(provider: str, model: str) -> ModelInfo:
    """The catalog entry for (provider, model); raises UnknownModelError with suggestions.

    A deprecated model is still returned: its `warning` says so.
    """
    return _lookup(_load(), provider, model)


def list_models(provider: str | None = None) -> list[ModelInfo]:
    models = _load().values()
    return [m for m in models if provider is None or m.provider == provider]


_aload = sync_to_async(_load)


async def aget_model(provider: str, model: str) -> ModelInfo:
    snap = _fresh()
    models = snap.models if snap is not None else await _aload()
    return _lookup(models, provider, model)


async def alist_models(provider: str | None = None) -> list[ModelInfo]:
    snap = _fresh()
    models = snap.models if snap is not None else await _aload()
    return [m for m in models.values() if provider is None or m.provider == provider]


# --- Keeping the table in step with the file ------------------------------------------------


@dataclass(slots=True)
class SyncResult:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    kept_edits: int = 0  # rows where at least one admin-edited field was left alone
    locked: int = 0

    def __str__(self) -> str:
        return (
            f"{self.created} created, {self.updated} updated, {self.unchanged} unchanged, "
            f"{self.kept_edits} with admin edits kept, {self.locked} locked"
        )


def sync_from_file(model_cls: Any = None) -> SyncResult:
    """Copy catalog.json into the table without clobbering admin edits.

    Rows that are `locked` are skipped; fields listed in a row's `edited_fields` are kept.
    Rows missing from the file (added in the admin) are left as they are. `model_cls` lets the
    data migration pass its historical model.
    """
    if model_cls is None:
        from .models import CatalogModel

        model_cls = CatalogModel
    result = SyncResult()
    now = timezone.now()
    existing = {(r.provider, r.model): r for r in model_cls.objects.all()}
    for (provider, model_id), fields in file_entries().items():
        row = existing.get((provider, model_id))
        if row is None:
            model_cls.objects.create(provider=provider, model=model_id, synced=now, **fields)
            result.created += 1
            continue
        if row.locked:
            result.locked += 1
            continue
        edited = set(row.edited_fields or ())
        changed = [
            name
            for name, value in fields.items()
            if name not in edited and getattr(row, name) != value
        ]
        if edited & set(fields):
            result.kept_edits += 1
        if not changed:
            result.unchanged += 1
            continue
        for name in changed:
            setattr(row, name, fields[name])
        row.synced = now
        row.updated = now
        row.save(update_fields=[*changed, "synced", "updated"])
        result.updated += 1
    clear_cache()
    return result
