"""The one vocabulary every adapter speaks: a plain request in, plain events out.

Nothing here touches the database or another app, so adapters can be tested alone.
"""

from __future__ import annotations

import abc
import asyncio
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import ClassVar, Literal

import httpx

from .transport import transport

Role = Literal["user", "assistant"]


@dataclass(frozen=True, slots=True)
class Turn:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class ChatRequest:
    provider: str
    model: str
    turns: tuple[Turn, ...]
    system: str = ""
    max_tokens: int | None = None
    temperature: float | None = None


# --- Events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """A model's thinking, kept apart from the answer."""

    text: str


@dataclass(frozen=True, slots=True)
class Source:
    url: str
    title: str = ""
    date: str = ""


@dataclass(frozen=True, slots=True)
class Sources:
    """The full list so far, in the vendor's order ([n] markers are 1-based into it)."""

    items: tuple[Source, ...]


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int = 0
    estimated: bool = False
    vendor_cost_usd: Decimal | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class FinishReason(StrEnum):
    STOP = "stop"
    LENGTH = "length"
    CONTENT_FILTER = "content_filter"
    CANCELLED = "cancelled"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Finish:
    reason: FinishReason


Event = TextDelta | ReasoningDelta | Sources | Usage | Finish


# --- Errors -------------------------------------------------------------------------------


class ErrorKind(StrEnum):
    RATE_LIMITED = "rate_limited"
    RETRYABLE = "retryable"
    FATAL = "fatal"


class ProviderError(Exception):
    """A classified failure. `message` is written for a person: it names the provider and
    the model and says what to do; `vendor_message` is the vendor's own text."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        provider: str,
        model: str,
        status: int | None = None,
        code: str = "",
        retry_after: float | None = None,
        daily_quota: bool = False,
        vendor_message: str = "",
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.provider = provider
        self.model = model
        self.status = status
        self.code = code
        self.retry_after = retry_after
        self.daily_quota = daily_quota
        self.vendor_message = vendor_message

    @property
    def permanent(self) -> bool:
        return self.kind is ErrorKind.FATAL

    def __repr__(self) -> str:
        return (
            f"ProviderError({self.kind.value}, {self.message!r}, status={self.status}, "
            f"code={self.code!r}, retry_after={self.retry_after})"
        )


# --- Adapters -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    api_key: str = ""
    base_url: str = ""
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    max_stream_s: float = 600.0
    extra: dict[str, str] = field(default_factory=dict)


class Provider(abc.ABC):
    """One vendor wire format. Subclasses implement `stream()`.

    The pooled httpx client is created once per event loop (daphne runs one) and reused by
    every request to this provider.
    """

    id: ClassVar[str]
    display_name: ClassVar[str]
    needs_key: ClassVar[bool] = True

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )

    def unavailable_reason(self) -> str:
        """Empty when the provider can be used, else a sentence saying why not."""
        if self.needs_key and not self.config.api_key:
            env = f"{self.id.upper()}_API_KEY"
            return f"{self.display_name} has no API key: set {env}."
        return ""

    @property
    def client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None or client.is_closed:
            client = httpx.AsyncClient(
                timeout=httpx.Timeout(
                    self.config.read_timeout_s,
                    connect=self.config.connect_timeout_s,
                ),
                # Our asyncio transport (providers/transport.py), pooled as httpx's is.
                transport=transport(
                    limits=httpx.Limits(max_connections=200, max_keepalive_connections=50)
                ),
            )
            self._clients[loop] = client
        return client

    @abc.abstractmethod
    def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        """Yield events for one reply; raise ProviderError on failure.

        Closing the iterator (aclose, or cancelling the task consuming it) must close the
        upstream HTTP response.
        """

    async def aclose(self) -> None:
        for client in list(self._clients.values()):
            await client.aclose()
        self._clients.clear()
