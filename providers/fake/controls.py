"""What a request to the fake asks for (controls, scenarios) and what it sent (recorded requests)."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

VENDOR_PREFIXES = {
    "openai": "/openai/v1",
    "perplexity": "/perplexity",
    "gemini": "/gemini/v1beta",
    "openrouter": "/openrouter/api/v1",
    "anthropic": "/anthropic/v1",
    "compat": "/compat/v1",
}
# Provider ids (providers/registry.py) to the fake's vendor names.
PROVIDER_VENDORS = {
    "openai": "openai",
    "perplexity": "perplexity",
    "gemini": "gemini",
    "openrouter": "openrouter",
    "anthropic": "anthropic",
    "openai_compat": "compat",
}
COMPAT_MODELS = ("llama3.2", "qwen2.5-coder:32b", "gemma3:4b")

_WORDS = ("Hello", "from", "the", "fake", "provider,", "streaming", "one", "token", "at", "a")
THOUGHT_PIECES = ("Let", " me", " think", " this", " through.")
THOUGHT = "".join(THOUGHT_PIECES)


def reply_pieces(tokens: int = 8, text: str | None = None) -> list[str]:
    """The answer the fake streams, one piece per token: `text` split at spaces, or
    `tokens` words cycling through a fixed list."""
    words = text.split(" ") if text is not None else [_WORDS[i % 10] for i in range(tokens)]
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def reply_text(tokens: int = 8, text: str | None = None) -> str:
    return "".join(reply_pieces(tokens, text))


def base_url(root: str, provider_id: str) -> str:
    """The base URL a provider's adapter should use when pointed at a fake served at `root`."""
    return root.rstrip("/") + VENDOR_PREFIXES[PROVIDER_VENDORS.get(provider_id, provider_id)]


# --- Controls -----------------------------------------------------------------------------


@dataclass(slots=True)
class Controls:
    ttft_ms: float = 0.0
    pace_ms: float = 0.0
    tokens: int = 8
    text: str | None = None
    prompt_tokens: int | None = None
    cost: float | None = None
    sources: int = 2
    status: int | None = None
    retry_after: str | None = None
    fault: str = ""
    fault_at: int | None = None
    think: bool | None = None
    no_usage: bool = False
    daily: bool = False
    quota: bool = False
    blocked: bool = False
    finish: str | None = None

    @classmethod
    def from_layers(cls, *layers: Mapping[str, Any]) -> Controls:
        controls = cls()
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        for layer in layers:
            for raw_name, value in layer.items():
                name = _ALIASES.get(raw_name, raw_name)
                if name not in types:
                    continue
                setattr(controls, name, _coerce(str(types[name]), value))
        return controls


_ALIASES = {
    "ttft": "ttft_ms",
    "pace": "pace_ms",
    "retry": "retry_after",
    "nousage": "no_usage",
    "no-usage": "no_usage",
    "prompt": "prompt_tokens",
}
FAULTS = {"hang", "stall", "cut", "reset", "malformed", "error", "linger"}
_FLAGS = {"think", "no_usage", "nousage", "daily", "quota", "blocked"}


def _coerce(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if "bool" in kind:
        return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
    if kind.startswith("int"):
        return int(value)
    if kind.startswith("float"):
        return float(value)
    return str(value)


def controls_from_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {
        k[len("x-fake-") :].replace("-", "_"): v
        for k, v in headers.items()
        if k.startswith("x-fake-")
    }


def split_model(model: str) -> tuple[str, dict[str, Any]]:
    """`gpt-4o-mini~429~retry=4` -> ("gpt-4o-mini", {"status": "429", "retry_after": "4"})."""
    name, *items = model.split("~")
    controls: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if eq:
            controls[key] = value
        elif item.isdigit():
            controls["status"] = item
        elif item in FAULTS:
            controls["fault"] = item
        elif item in _FLAGS:
            controls[item] = True
    return name, controls


@dataclass(slots=True)
class Scenario:
    vendor: str
    model: str | None
    times: int
    controls: dict[str, Any]


# --- Recording ----------------------------------------------------------------------------


@dataclass(eq=False)
class RecordedRequest:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    json: Any
    vendor: str = ""
    model: str = ""
    client_closed: bool = False  # the client hung up before the server finished
    connection: int = 0  # which of the server's connections it came on (from 1)
    finished: threading.Event = field(default_factory=threading.Event, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": self.headers,
            "json": self.json,
            "vendor": self.vendor,
            "model": self.model,
            "client_closed": self.client_closed,
            "connection": self.connection,
            "finished": self.finished.is_set(),
        }

    def wait_finished(self, timeout: float = 5.0) -> bool:
        """Block until the server is done with this request (from any thread)."""
        return self.finished.wait(timeout)

    async def finished_async(self, timeout: float = 5.0) -> bool:
        """Await the same without blocking the caller's event loop."""
        return await asyncio.to_thread(self.finished.wait, timeout)
