"""One adapter instance per provider id, built from settings (and rebuilt when they change)."""

from __future__ import annotations

import importlib
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed

from .base import Provider, ProviderConfig

# Provider id -> adapter class, imported on first use.
ADAPTERS: dict[str, str] = {
    "demo": "providers.demo.DemoProvider",
    "openai": "providers.openai.OpenAIProvider",
    "perplexity": "providers.perplexity.PerplexityProvider",
    "gemini": "providers.gemini.GeminiProvider",
    "openrouter": "providers.openrouter.OpenRouterProvider",
    "anthropic": "providers.anthropic.AnthropicProvider",
    "openai_compat": "providers.openai.OpenAICompatProvider",
}
PROVIDER_IDS = tuple(ADAPTERS)

_instances: dict[str, Provider] = {}


class UnknownProviderError(LookupError):
    pass


def _config_for(provider_id: str) -> ProviderConfig:
    common: dict[str, Any] = {
        "connect_timeout_s": settings.LLM_CONNECT_TIMEOUT_S,
        "read_timeout_s": settings.LLM_READ_TIMEOUT_S,
        "max_stream_s": settings.LLM_MAX_STREAM_S,
    }
    if provider_id == "demo":
        return ProviderConfig(
            extra={
                "ttft_ms": str(settings.DEMO_TTFT_MS),
                "tokens_per_s": str(settings.DEMO_TOKENS_PER_S),
            },
            **common,
        )
    conf = settings.LLM_PROVIDERS.get(provider_id, {})
    return ProviderConfig(
        api_key=conf.get("api_key", ""),
        base_url=conf.get("base_url", "").rstrip("/"),
        extra={k: v for k, v in conf.items() if k not in ("api_key", "base_url")},
        **common,
    )


def get_provider(provider_id: str) -> Provider:
    instance = _instances.get(provider_id)
    if instance is None:
        path = ADAPTERS.get(provider_id)
        if path is None:
            raise UnknownProviderError(provider_id)
        module_name, class_name = path.rsplit(".", 1)
        cls = getattr(importlib.import_module(module_name), class_name)
        instance = cls(_config_for(provider_id))
        _instances[provider_id] = instance
    return instance


def reset() -> None:
    """Forget every adapter so the next use reads settings again (tests, reconfiguration)."""
    _instances.clear()


async def aclose_all() -> None:
    for instance in list(_instances.values()):
        await instance.aclose()


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting.startswith(("LLM_", "DEMO_")):
        reset()


def connect_signals() -> None:
    setting_changed.connect(_on_setting_changed, dispatch_uid="providers.registry.reset")
