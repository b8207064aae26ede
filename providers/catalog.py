"""The model catalog: names, prices, tiers, context windows.

Interface used by the other apps (keep it stable):
- `ModelInfo`, `UnknownModelError(provider, model, suggestions)`
- `get_model(provider, model)` / `aget_model(...)` -> ModelInfo, raising UnknownModelError
- `list_models()` / `alist_models()` -> list[ModelInfo]
- `ModelInfo.cost(usage)` -> Decimal | None (None when unpriced)
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from pathlib import Path

from asgiref.sync import sync_to_async

from .base import Usage

CATALOG_PATH = Path(__file__).with_name("catalog.json")
MTOK = Decimal(1_000_000)


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

    @property
    def priced(self) -> bool:
        return self.input_per_mtok is not None and self.output_per_mtok is not None

    def cost(self, usage: Usage) -> Decimal | None:
        if self.input_per_mtok is None or self.output_per_mtok is None:
            return None
        return (
            usage.prompt_tokens * self.input_per_mtok
            + usage.completion_tokens * self.output_per_mtok
        ) / MTOK


class UnknownModelError(LookupError):
    def __init__(self, provider: str, model: str, suggestions: list[str]) -> None:
        self.provider = provider
        self.model = model
        self.suggestions = suggestions
        hint = f" Did you mean {', '.join(suggestions)}?" if suggestions else ""
        super().__init__(f"Unknown model {model!r} for provider {provider!r}.{hint}")


def _decimal(value: object) -> Decimal | None:
    return None if value is None else Decimal(str(value))


@cache
def _load() -> dict[tuple[str, str], ModelInfo]:
    data = json.loads(CATALOG_PATH.read_text())
    models: dict[tuple[str, str], ModelInfo] = {}
    for provider, entries in data.items():
        for model_id, entry in entries.items():
            models[(provider, model_id)] = ModelInfo(
                provider=provider,
                id=model_id,
                display_name=entry.get("display_name", model_id),
                context_window=entry.get("context_window"),
                input_per_mtok=_decimal(entry.get("input_per_mtok")),
                output_per_mtok=_decimal(entry.get("output_per_mtok")),
                tier=entry.get("tier", "paid"),
                capabilities=tuple(entry.get("capabilities", ["streaming"])),
                status=entry.get("status", "current"),
                source=entry.get("source", ""),
            )
    return models


def list_models() -> list[ModelInfo]:
    return list(_load().values())


def get_model(provider: str, model: str) -> ModelInfo:
    models = _load()
    info = models.get((provider, model))
    if info is None:
        ids = [m for (p, m) in models if p == provider]
        raise UnknownModelError(provider, model, difflib.get_close_matches(model, ids, n=3))
    return info


aget_model = sync_to_async(get_model)
alist_models = sync_to_async(list_models)
