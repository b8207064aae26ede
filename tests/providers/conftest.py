from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from providers.base import Provider
from tests.fake_server import FakeProvider, fake_provider, fake_provider_server  # noqa: F401

MakeAdapter = Callable[..., Any]


@pytest.fixture
async def adapter(fake_provider: FakeProvider) -> AsyncIterator[MakeAdapter]:  # noqa: F811
    """Build adapters pointed at the fake; their pooled clients are closed afterwards."""
    made: list[Provider] = []

    def make(cls: type[Provider], provider_id: str | None = None, **config: Any) -> Any:
        instance = cls(fake_provider.config(provider_id or cls.id, **config))
        made.append(instance)
        return instance

    yield make
    for instance in made:
        await instance.aclose()
