"""Checks on what a person sends, shared by the page and the API."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.conf import settings

from providers import catalog
from providers.registry import PROVIDER_IDS, get_provider

if TYPE_CHECKING:
    from .models import Organization


@dataclass(frozen=True, slots=True)
class FieldError:
    field: str
    message: str
    status: int = 422  # the API's HTTP status for this error
    code: str = "validation_error"


def check_send(
    content: str, provider: str, model: str, *, org: Organization | None = None
) -> list[FieldError]:
    errors: list[FieldError] = []
    if org is not None:
        from telemetry.budgets import budget_refusal

        refusal = budget_refusal(org)
        if refusal:
            return [FieldError("budget", refusal, status=403, code="budget_exceeded")]
    if not content.strip():
        errors.append(FieldError("content", "Write a message first."))
    elif len(content) > settings.MAX_MESSAGE_CHARS:
        errors.append(
            FieldError(
                "content",
                f"The message is {len(content):,} characters long; "
                f"the limit is {settings.MAX_MESSAGE_CHARS:,}.",
            )
        )
    if provider not in PROVIDER_IDS:
        errors.append(
            FieldError(
                "provider",
                f"Unknown provider {provider!r}; choose one of {', '.join(PROVIDER_IDS)}.",
            )
        )
        return errors
    reason = get_provider(provider).unavailable_reason()
    if reason:
        errors.append(FieldError("provider", reason))
        return errors
    try:
        catalog.get_model(provider, model)
    except catalog.UnknownModelError as exc:
        errors.append(FieldError("model", str(exc)))
    return errors
