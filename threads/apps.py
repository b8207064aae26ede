from __future__ import annotations

from django.apps import AppConfig


class ThreadsConfig(AppConfig):
    name = "threads"

    def ready(self) -> None:
        # Registers the deploy check that stands in for Django's middleware-name checks.
        import chatproject.middleware  # noqa: F401
