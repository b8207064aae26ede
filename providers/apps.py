from __future__ import annotations

from django.apps import AppConfig


class ProvidersConfig(AppConfig):
    name = "providers"
    verbose_name = "LLM providers"

    def ready(self) -> None:
        from . import registry

        registry.connect_signals()
