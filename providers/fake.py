"""A fake of every vendor's streaming API, byte for byte, with faults on demand.

A hand-written asyncio HTTP/1.1 server, so the framing is exactly what each vendor sends
(see docs/provider-protocols.md) and faults a real framework would smooth over are possible.
Connections are kept alive between requests, as the vendors' are (a request that says
`Connection: close` gets it, and a fault that breaks a response closes its connection);
streams use chunked encoding, one chunk per event, flushed as it is written.

Routes (each vendor under its own prefix, so one server stands in for all of them):

    POST /openai/v1/chat/completions                                  OpenAI
    POST /perplexity/chat/completions                                 Perplexity
    POST /gemini/v1beta/models/{model}:streamGenerateContent?alt=sse  Gemini
    POST /openrouter/api/v1/chat/completions                          OpenRouter
    POST /anthropic/v1/messages                                       Anthropic
    POST /compat/v1/chat/completions, GET /compat/v1/models           Ollama-style server
    GET  /_fake/requests   recorded requests as JSON
    POST /_fake/script     queue scenarios (a JSON object or a list of them)
    POST /_fake/reset      forget requests and scenarios

Controls. Each request's behaviour is a set of named controls, from three layers; a later
layer overrides an earlier one:

1. headers `x-fake-<name>` (underscores as hyphens): `x-fake-status: 429`,
   `x-fake-retry-after: 3`, `x-fake-fault: cut`, `x-fake-ttft-ms: 20`;
2. a model suffix: `<model>~<item>~<item>...`, where an item is a 3-digit status (`429`), a
   fault or flag name (`hang`, `cut`, `think`, `nousage`, `daily`...) or `name=value`
   (`tokens=20`, `ttft=50`, `pace=5`, `retry=4`). Examples: `gpt-4o-mini~429~retry=4`,
   `sonar~cut~tokens=10`. Responses echo the model without its suffix;
3. a scenario queued with `POST /_fake/script` (or the test fixture's `.script()`):
   `{"vendor": "openai", "model": "gpt-4o-mini", "times": 1, "status": 503}`. It is used
   by the next `times` requests to that vendor (`compat` or `openai_compat` for the
   OpenAI-compatible server) and, when `model` is given, that model, so app-level tests can
   drive real catalog ids. Scenarios are matched in the order they were queued.

Control names (header / suffix alias / script key):

    ttft_ms (ttft)       delay before the first data event, ms (keep-alives come earlier)
    pace_ms (pace)       delay between tokens, ms
    tokens               answer length in tokens (default 8); see reply_pieces()
    text                 exact answer text instead (split at spaces)
    prompt_tokens        prompt tokens to report (default: request body size / 10)
    cost                 vendor cost to report (Perplexity total_cost, OpenRouter cost)
    sources              Perplexity: how many citations/search results (default 2)
    status               answer with this error instead (see "Errors" below)
    retry_after (retry)  seconds (or an HTTP-date) for the vendor's retry hint
    fault                hang | stall | cut | reset | malformed | error | linger
    fault_at             after how many tokens a mid-stream fault strikes (default: half)
    think                stream reasoning (Gemini thoughts, Anthropic thinking, Perplexity
                         <think> tags split across chunks, OpenRouter/compat delta.reasoning);
                         on by default for Perplexity sonar-reasoning* / deep-research
    no_usage (nousage)   omit usage from the stream
    daily                a 429 is a per-day quota (Gemini QuotaFailure, OpenRouter free)
    quota                OpenAI: a 429 insufficient_quota
    blocked              Gemini: promptFeedback.blockReason, no candidates
    finish               the vendor's own finish reason string (e.g. SAFETY, refusal)

Faults: `hang` reads the request and never answers; the others start a normal stream and,
after `fault_at` tokens: `stall` goes silent, `cut` ends the body cleanly without the
vendor's terminal event, `reset` drops the connection mid-body, `malformed` sends a data line
that is not JSON, `error` sends the vendor's in-stream error event. `linger` sends the whole
reply, terminal event included, and then leaves the body open instead of ending it.

Errors: `status` picks a scenario by its usual status and each vendor answers the way it
really does (protocols doc, section 4): 400 bad request, 401 bad key (Perplexity: an HTML
page; Gemini: 400 API_KEY_INVALID), 402 credits (Anthropic: 400 credit balance; OpenAI: 429
insufficient_quota), 403 forbidden, 404 unknown model (Perplexity and OpenRouter: 400),
429 rate limit, 500 server error, 502, 503 overloaded (Anthropic: 529), 529 (Anthropic
overloaded; others 503). Retry hints for 429/503/529: OpenAI, Perplexity and compat send a
`Retry-After` header when `retry_after` is set (OpenAI's message also says "Please try again
in Ns"); Anthropic always sends `retry-after` (default 5); Gemini sends
`RetryInfo.retryDelay` (default "19s") and OpenRouter `metadata.headers.X-RateLimit-Reset`
(epoch ms, default now + 60 s), neither with a header.

Requests are also validated as the vendors do: a missing key is a 401, OpenAI reasoning
models reject max_tokens and a non-default temperature, Perplexity rejects non-alternating
turns, Anthropic requires max_tokens and anthropic-version.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

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
_FAULTS = {"hang", "stall", "cut", "reset", "malformed", "error", "linger"}
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
        elif item in _FAULTS:
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


# --- HTTP plumbing ------------------------------------------------------------------------


def _reason(status: int) -> str:
    if status == 529:
        return "Overloaded"  # Anthropic's own status, unknown to http.HTTPStatus
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class _Wire:
    """One response on one connection, written byte for byte."""

    def __init__(self, writer: asyncio.StreamWriter, keep_alive: bool = True) -> None:
        self.writer = writer
        self.finished = False
        self.connection = "keep-alive" if keep_alive else "close"
        self.broken = False  # a fault left the connection unfit for another request

    def _head(self, status: int, headers: list[tuple[str, str]]) -> bytes:
        lines = [f"HTTP/1.1 {status} {_reason(status)}"]
        lines += [f"{k}: {v}" for k, v in headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def whole(
        self, status: int, body: bytes, content_type: str, headers: list[tuple[str, str]]
    ) -> None:
        head = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        head.append(("Connection", self.connection))
        self.writer.write(self._head(status, [*head, *headers]) + body)
        await self.writer.drain()

    async def start(self, content_type: str, headers: list[tuple[str, str]]) -> None:
        head = [
            ("Content-Type", content_type),
            ("Transfer-Encoding", "chunked"),
            ("Connection", self.connection),
            ("Cache-Control", "no-cache"),
        ]
        self.writer.write(self._head(200, [*head, *headers]))
        await self.writer.drain()

    async def chunk(self, data: bytes) -> None:
        self.writer.write(b"%x\r\n%s\r\n" % (len(data), data))
        await self.writer.drain()

    async def end(self) -> None:
        self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()

    def abort(self) -> None:
        self.broken = True
        self.writer.transport.abort()


@dataclass(slots=True)
class Frame:
    data: bytes
    token: bool = False  # carries one token: paced, and faults are placed between these
    keepalive: bool = False  # sent at once, even before the TTFT delay


@dataclass(slots=True)
class Reply:
    """What one request will be answered with, vendor-neutral."""

    vendor: str
    model: str
    body: dict[str, Any]
    controls: Controls
    answer: list[str]
    thoughts: list[str]
    finish: str  # "stop" or "length", before the vendor's own spelling
    prompt_tokens: int
    rid: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def completion_tokens(self) -> int:
        return len(self.answer) + len(self.thoughts)

    @property
    def reasoning_tokens(self) -> int:
        return len(self.thoughts)


# --- Vendors ------------------------------------------------------------------------------


def _compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _data(obj: Any, sep: bytes = b"\n\n", dumps: Callable[[Any], bytes] = _compact) -> bytes:
    return b"data: " + dumps(obj) + sep


ErrorAnswer = tuple[int, list[tuple[str, str]], bytes, str]
JSON_TYPE = "application/json"

_SCENARIOS = {
    400: "bad_request",
    401: "auth",
    402: "credits",
    403: "forbidden",
    404: "unknown_model",
    429: "rate_limit",
    500: "server_error",
    502: "bad_gateway",
    503: "overloaded",
    504: "timeout",
    529: "overloaded",
}


def _retry_seconds(controls: Controls, default: float) -> float:
    try:
        return float(controls.retry_after) if controls.retry_after else default
    except ValueError:
        return default


def _retry_header(controls: Controls) -> list[tuple[str, str]]:
    return [("retry-after", controls.retry_after)] if controls.retry_after else []


class Vendor:
    name = ""
    content_type = "text/event-stream"

    def model(self, path: str, body: dict[str, Any]) -> str:
        return str(body.get("model") or "")

    def max_tokens(self, body: dict[str, Any]) -> int | None:
        value = body.get("max_completion_tokens") or body.get("max_tokens")
        return int(value) if value else None

    def reject(self, headers: Mapping[str, str], reply: Reply) -> ErrorAnswer | None:
        """The vendor's answer to a request it would refuse, else None."""
        auth = headers.get("authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            return self.error("auth", reply)
        return None

    def error(self, scenario: str, reply: Reply, status: int = 0) -> ErrorAnswer:
        raise NotImplementedError

    def stream_headers(self, reply: Reply) -> list[tuple[str, str]]:
        return []

    def frames(self, reply: Reply) -> list[Frame]:
        raise NotImplementedError

    def stream_error(self, reply: Reply) -> bytes:
        raise NotImplementedError

    def malformed(self, reply: Reply) -> bytes:
        return b'data: {"id":"chatcmpl-broken","choices":[{"delta":{"content":"tru\n\n'


class OpenAI(Vendor):
    name = "openai"

    def reject(self, headers: Mapping[str, str], reply: Reply) -> ErrorAnswer | None:
        refused = super().reject(headers, reply)
        if refused or not reply.model.startswith(("o1", "o3", "o4", "gpt-5")):
            return refused
        # Quoted from live 400s of reasoning models.
        if "max_tokens" in reply.body:
            return self._error(
                400,
                "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.",
                "invalid_request_error",
                "unsupported_parameter",
                param="max_tokens",
            )
        temperature = reply.body.get("temperature")
        if temperature is not None and temperature != 1:
            return self._error(
                400,
                f"Unsupported value: 'temperature' does not support {temperature} with this model. Only the default (1) value is supported.",
                "invalid_request_error",
                "unsupported_value",
                param="temperature",
            )
        return None

    def _error(
        self,
        status: int,
        message: str,
        type_: str,
        code: str | None,
        param: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> ErrorAnswer:
        body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
        return status, headers or [], json.dumps(body, indent=4).encode(), JSON_TYPE

    def error(self, scenario: str, reply: Reply, status: int = 0) -> ErrorAnswer:
        c, m = reply.controls, reply.model
        if scenario == "auth":
            return self._error(
                401,
                "Incorrect API key provided: sk-fake***. You can find your API key at https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                "invalid_api_key",
            )
        if scenario in ("credits", "quota") or (scenario == "rate_limit" and c.quota):
            return self._error(
                429,
                "You exceeded your current quota, please check your plan and billing details. For more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
                "insufficient_quota",
                "insufficient_quota",
            )
        if scenario == "forbidden":
            return self._error(
                403,
                "Country, region, or territory not supported",
                "request_forbidden",
                "unsupported_country_region_territory",
            )
        if scenario == "unknown_model":
            return self._error(
                404,
                f"The model `{m}` does not exist or you do not have access to it.",
                "invalid_request_error",
                "model_not_found",
            )
        if scenario == "rate_limit":
            wait = f"{_retry_seconds(c, 1.146):g}s"
            return self._error(
                429,
                f"Rate limit reached for {m} in organization org-fake on tokens per min (TPM): Limit 200000, Used 199500, Requested 1200. Please try again in {wait}. Visit https://platform.openai.com/account/rate-limits to learn more.",
                "tokens",
                "rate_limit_exceeded",
                headers=_retry_header(c),
            )
        if scenario == "server_error":
            return self._error(
                500,
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
                None,
            )
        if scenario == "overloaded":
            return self._error(
                503,
                "The engine is currently overloaded, please try again later.",
                "server_error",
                None,
                headers=_retry_header(c),
            )
        return self._error(status or 400, "Fake error requested.", "invalid_request_error", None)

    def _chunk(self, reply: Reply, delta: dict[str, Any], finish: str | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": f"chatcmpl-{reply.rid}",
            "object": "chat.completion.chunk",
            "created": reply.created,
            "model": reply.model,
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if self._wants_usage(reply):
            chunk["usage"] = None
        return _data(chunk)

    def _wants_usage(self, reply: Reply) -> bool:
        options = reply.body.get("stream_options") or {}
        return bool(options.get("include_usage")) and not reply.controls.no_usage

    def _usage(self, reply: Reply) -> dict[str, Any]:
        return {
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": reply.reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def frames(self, reply: Reply) -> list[Frame]:
        # o-series think without showing it: only the usage counts the thoughts.
        frames = [Frame(self._chunk(reply, {"role": "assistant", "content": "", "refusal": None}))]
        frames += [Frame(self._chunk(reply, {"content": p}), token=True) for p in reply.answer]
        frames.append(Frame(self._chunk(reply, {}, reply.controls.finish or reply.finish)))
        if self._wants_usage(reply):
            usage_chunk = {
                "id": f"chatcmpl-{reply.rid}",
                "object": "chat.completion.chunk",
                "created": reply.created,
                "model": reply.model,
                "service_tier": "default",
                "system_fingerprint": "fp_fake",
                "choices": [],
                "usage": self._usage(reply),
            }
            frames.append(Frame(_data(usage_chunk)))
        frames.append(Frame(b"data: [DONE]\n\n"))
        return frames

    def stream_error(self, reply: Reply) -> bytes:
        return _data(
            {
                "error": {
                    "message": "The server had an error while processing your request. Sorry about that!",
                    "type": "server_error",
                }
            }
        )


class Compat(OpenAI):
    """Ollama's flavour: role in every delta, thinking in delta.reasoning, no key needed."""

    name = "compat"

    def reject(self, headers: Mapping[str, str], reply: Reply) -> ErrorAnswer | None:
        return None

    def error(self, scenario: str, reply: Reply, status: int = 0) -> ErrorAnswer:
        if scenario == "unknown_model":
            return self._error(
                404, f'model "{reply.model}" not found, try pulling it first', "api_error", None
            )
        return super().error(scenario, reply, status)

    def _compat_chunk(self, reply: Reply, delta: dict[str, Any], finish: str | None) -> bytes:
        return _data(
            {
                "id": f"chatcmpl-{reply.rid[:3]}",
                "object": "chat.completion.chunk",
                "created": reply.created,
                "model": reply.model,
                "system_fingerprint": "fp_ollama",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
        )

    def frames(self, reply: Reply) -> list[Frame]:
        role = {"role": "assistant", "content": ""}
        frames = [
            Frame(self._compat_chunk(reply, {**role, "reasoning": t}, None), token=True)
            for t in reply.thoughts
        ]
        frames += [
            Frame(self._compat_chunk(reply, {**role, "content": p}, None), token=True)
            for p in reply.answer
        ]
        frames.append(Frame(self._compat_chunk(reply, role, reply.controls.finish or reply.finish)))
        if self._wants_usage(reply):
            usage = {k: v for k, v in self._usage(reply).items() if not k.endswith("details")}
            chunk = {
                "id": f"chatcmpl-{reply.rid[:3]}",
                "object": "chat.completion.chunk",
                "created": reply.created,
                "model": reply.model,
                "system_fingerprint": "fp_ollama",
                "choices": [],
                "usage": usage,
            }
            frames.append(Frame(_data(chunk)))
        frames.append(Frame(b"data: [DONE]\n\n"))
        return frames


class OpenRouter(OpenAI):
    name = "openrouter"
    KEEPALIVE = b": OPENROUTER PROCESSING\n\n"

    def _or_error(
        self,
        status: int,
        message: str,
        metadata: dict[str, Any] | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> ErrorAnswer:
        error: dict[str, Any] = {"message": message, "code": status}
        if metadata is not None:
            error["metadata"] = metadata
        return status, headers or [], _compact({"error": error}), JSON_TYPE

    def error(self, scenario: str, reply: Reply, status: int = 0) -> ErrorAnswer:
        c, m = reply.controls, reply.model
        if scenario == "auth":
            return self._or_error(401, "No auth credentials found")
        if scenario in ("credits", "quota"):
            return self._or_error(
                402,
                "Insufficient credits. This account never purchased credits. Make sure your key is on the correct account or org, and if so, purchase more at https://openrouter.ai/settings/credits",
            )
        if scenario == "forbidden":
            return self._or_error(
                403,
                f'{m} requires moderation on OpenAI. Your input was flagged for "violence".',
                {
                    "reasons": ["violence"],
                    "flagged_input": "...",
                    "provider_name": "OpenAI",
                    "model_slug": m,
                },
            )
        if scenario == "unknown_model":
            return self._or_error(400, f"{m} is not a valid model ID")
        if scenario == "rate_limit":
            reset_ms = int((time.time() + _retry_seconds(c, 60)) * 1000)
            if c.daily:
                message = "Rate limit exceeded: free-models-per-day. Add 10 credits to unlock 1000 free model requests per day"
                limit = "50"
            else:
                message = "Rate limit exceeded: free-models-per-min."
                limit = "20"
            headers = {
                "X-RateLimit-Limit": limit,
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": str(reset_ms),
            }
            return self._or_error(429, message, {"headers": headers, "provider_name": None})
        if scenario == "bad_gateway":
            return self._or_error(
                502,
                "Provider returned error",
                {"provider_name": "OpenAI", "raw": '{"error":{"message":"upstream failure"}}'},
            )
        if scenario == "server_error":
            return self._or_error(500, "Internal Server Error")
        if scenario == "overloaded":
            return self._or_error(
                503, "No endpoints found that can handle the requested parameters."
            )
        return self._or_error(status or 400, "Fake error requested.")

    def stream_headers(self, reply: Reply) -> list[tuple[str, str]]:
        return [("X-Generation-Id", f"gen-{reply.created}-{reply.rid[:20]}")]

    def _or_chunk(
        self, reply: Reply, delta: dict[str, Any], finish: str | None, **extra: Any
    ) -> bytes:
        return _data(
            {
                "id": f"gen-{reply.created}-{reply.rid[:20]}",
                "provider": "OpenAI",
                "model": reply.model,
                "object": "chat.completion.chunk",
                "created": reply.created,
                "choices": [
                    {
                        "index": 0,
                        "delta": delta,
                        "finish_reason": finish,
                        "native_finish_reason": finish,
                        "logprobs": None,
                    }
                ],
                **extra,
            }
        )

    def frames(self, reply: Reply) -> list[Frame]:
        role = {"role": "assistant", "content": ""}
        frames = [Frame(self.KEEPALIVE, keepalive=True) for _ in range(3)]
        pieces = [({**role, "reasoning": t}) for t in reply.thoughts]
        pieces += [{"role": "assistant", "content": p} for p in reply.answer]
        for i, delta in enumerate(pieces):
            frames.append(Frame(self._or_chunk(reply, delta, None), token=True))
            if i % 3 == 2:  # keep-alives between events too, as the capture shows
                frames.append(Frame(self.KEEPALIVE, keepalive=True))
        finish = reply.controls.finish or reply.finish
        frames.append(Frame(self._or_chunk(reply, role, finish)))
        if not reply.controls.no_usage:
            cost = reply.controls.cost
            if cost is None:
                cost = round(reply.prompt_tokens * 0.15e-6 + reply.completion_tokens * 0.6e-6, 10)
            usage = {
                "prompt_tokens": reply.prompt_tokens,
                "completion_tokens": reply.completion_tokens,
                "total_tokens": reply.prompt_tokens + reply.completion_tokens,
                "cost": cost,
                "is_byok": False,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "cost_details": {"upstream_inference_cost": None},
                "completion_tokens_details": {
                    "reasoning_tokens": reply.reasoning_tokens,
                    "image_tokens": 0,
                },
            }
            frames.append(Frame(self._or_chunk(reply, role, finish, usage=usage)))
        frames.append(Frame(b"data: [DONE]\n\n"))
        return frames

    def stream_error(self, reply: Reply) -> bytes:
        return _data(
            {
                "id": f"gen-{reply.created}-{reply.rid[:20]}",
                "object": "chat.completion.chunk",
                "created": reply.created,
                "model": reply.model,
                "provider": "OpenAI",
                "error": {"code": "server_error", "message": "Provider disconnected unexpectedly"},
                "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
            }
        )


def _spaced(obj: Any) -> bytes:
    # Perplexity's JSON uses Python's default ", " / ": " separators.
    return json.dumps(obj, ensure_ascii=False).encode()


_PPLX_401 = (
    "<html>\r\n<head><title>401 Authorization Required</title></head>\r\n<body>\r\n"
    "<center><h1>401 Authorization Required</h1></center>\r\n<hr><center>openresty</center>\r\n"
    "</body>\r\n</html>\r\n"
)


class Perplexity(Vendor):
    name = "perplexity"
    content_type = "text/event-stream; charset=utf-8"

    def reject(self, headers: Mapping[str, str], reply: Reply) -> ErrorAnswer | None:
        refused = super().reject(headers, reply)
        if refused:
            return refused
        roles = [m.get("role") for m in reply.body.get("messages") or [] if isinstance(m, dict)]
        while roles and roles[0] == "system":
            roles.pop(0)
        if roles and (
            roles[0] != "user" or any(a == b for a, b in zip(roles, roles[1:], strict=False))
        ):
            return self._error(
                400,
                "After the (optional) system message(s), user and assistant roles should be alternating.",
                "invalid_message",
            )
        return None

    def _error(
        self, status: int, message: str, type_: str, headers: list[tuple[str, str]] | None = None
    ) -> ErrorAnswer:
        body = {"error": {"message": message, "type": type_, "code": status}}
        return status, headers or [], _spaced(body), JSON_TYPE

    def error(self, scenario: str, reply: Reply, status: int = 0) -> ErrorAnswer:
        if scenario == "auth":
            return 401, [("server", "cloudflare")], _PPLX_401.encode(), "text/html"
        if scenario == "unknown_model":
            return self._error(
                400,
                f"Invalid model '{reply.model}'. Permitted models can be found in the documentation at https://docs.perplexity.ai/guides/model-cards.",
                "invalid_model",
            )
        if scenario == "rate_limit":
            return self._error(
                429, "Rate limit exceeded", "rate_limit_exceeded", _retry_header(reply.controls)
            )
        if scenario in ("credits", "quota"):
            return self._error(402, "Insufficient credits", "insufficient_quota")
        if scenario == "overloaded":
            return self._error(
                503,
                "Service temporarily unavailable",
                "service_unavailable",
                _retry_header(reply.controls),
            )
        if scenario == "server_error":
            return self._error(500, "Internal server error", "internal_server_error")
        return self._error(status or 400, "Fake error requested.", "bad_request")

    def _sources(self, reply: Reply) -> tuple[list[str], list[dict[str, str]]]:
        n = reply.controls.sources
        urls = [f"https://example.com/source-{i + 1}" for i in range(n)]
        results = [
            {
                "title": f"Source {i + 1}",
                "url": url,
                "date": f"2025-03-{i + 1:02d}",
                "last_updated": "2025-09-01",
                "snippet": f"Snippet {i + 1}.",
            }
            for i, url in enumerate(urls)
        ]
        return urls, results

    def frames(self, reply: Reply) -> list[Frame]:
        citations, results = self._sources(reply)
        pieces: list[str] = []
        if reply.thoughts:
            # Tags split across chunks on purpose, as live reasoning streams do.
            t = reply.thoughts
            pieces += ["<thi", "nk>\n" + t[0], *t[1:-1], t[-1] + "\n</th", "ink>\n\n"]
        pieces += reply.answer
        frames: list[Frame] = []
        so_far = ""
        for i, piece in enumerate(pieces):
            so_far += piece
            frames.append(
                Frame(
                    self._chunk(reply, i + 1, citations, results, so_far, piece, None), token=True
                )
            )
        finish = reply.controls.finish or reply.finish
        frames.append(
            Frame(self._chunk(reply, len(pieces), citations, results, so_far, "", finish))
        )
        return frames

    def _chunk(
        self,
        reply: Reply,
        count: int,
        citations: list[str],
        results: list[dict[str, str]],
        so_far: str,
        piece: str,
        finish: str | None,
    ) -> bytes:
        chunk: dict[str, Any] = {"id": reply.rid, "model": reply.model, "created": reply.created}
        if not reply.controls.no_usage:
            completion = min(count, reply.completion_tokens)
            usage: dict[str, Any] = {
                "prompt_tokens": reply.prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": reply.prompt_tokens + completion,
                "search_context_size": "low",
            }
            if reply.thoughts:
                usage["reasoning_tokens"] = reply.reasoning_tokens
            if finish:
                total = reply.controls.cost
                inp = round(reply.prompt_tokens * 1e-6, 6)
                out = round(completion * 1e-6, 6)
                if total is None:
                    total = round(inp + out + 0.006, 6)
                usage["cost"] = {
                    "input_tokens_cost": inp,
                    "output_tokens_cost": out,
                    "request_cost": 0.006,
                    "total_cost": total,
                }
            chunk["usage"] = usage
        chunk["citations"] = citations
        chunk["search_results"] = results
        chunk["object"] = "chat.completion"
        chunk["choices"] = [
            {
                "index": 0,
                "finish_reason": finish,
                "message": {"role": "assistant", "content": so_far},
                "delta": {"role": "assistant", "content": piece},
            }
        ]
        return _data(chunk, b"\r\n\r\n", _spaced)

    def stream_error(self, reply: Reply) -> bytes:
        # Perplexity's in-stream error form is undocumented; the OpenAI shape is the guess.
        return _data(
            {
                "error": {
                    "message": "Internal server error",
                    "type": "internal_server_error",
                    "code": 500,
                }
            },
            b"\r\n\r\n",
            _spaced,
        )

    def malformed(self, reply: Reply) -> bytes:
        return b'data: {"id": "broken", "choices": [{"delta": {"content": "tru\r\n\r\n'


class Gemini(Vendor):
    name = "gemini"

    def model(self, path: str, body: dict[str, Any]) -> str:
        tail = path.rsplit("/models/", 1)[-1]
        return unquote(tail.split(":", 1)[0])

    def max_tokens(self, body: dict[str, Any]) -> int | None:
        value = (body.get("generationConfig") or {}).get("maxOutputTokens")
        return int(value) if value else None

    def reject(self, headers: Mapping[str, str], reply: Reply) -> ErrorAnswer | None:
        if not headers.get("x-goog-api-key"):
            return self._error(
                403,
                "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
                "PERMISSION_DENIED",
            )
        return None

    def _error(
        self,
        status: int,
        message: str,
        enum: str,
        details: list[dict[str, Any]] | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> ErrorAnswer:
        error: dict[str, Any] = {"code": status, "message": message, "status": enum}
        if details:
            error["details"] = details
        return status, headers or [], json.dumps({"error": error}, indent=2).encode(), JSON_TYPE

    def error(self, scenario: str, reply: Reply, status: int = 0) -> ErrorAnswer:
        c, m = reply.controls, reply.model
        if scenario == "auth":
            return self._error(
                400,
                "API key not valid. Please pass a valid API key.",
                "INVALID_ARGUMENT",
                [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                        "metadata": {"service": "generativelanguage.googleapis.com"},
                    }
                ],
            )
        if scenario == "forbidden":
            return self._error(
                403, "Permission denied on resource project fake.", "PERMISSION_DENIED"
            )
        if scenario == "unknown_model":
            return self._error(
                404,
                f"models/{m} is not found for API version v1beta, or is not supported for generateContent. Call ListModels to see the list of available models and their supported methods.",
                "NOT_FOUND",
            )
        if scenario == "rate_limit":
            per = "PerDay" if c.daily else "PerMinute"
            delay = c.retry_after if c.retry_after else "19"
            return self._error(
                429,
                f"You exceeded your current quota, please check your plan and billing details. For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits. Please retry in {delay}s.",
                "RESOURCE_EXHAUSTED",
                [
                    {
                        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                        "violations": [
                            {
                                "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                                "quotaId": f"GenerateRequests{per}PerProjectPerModel-FreeTier",
                                "quotaDimensions": {"location": "global", "model": m},
                                "quotaValue": "250" if c.daily else "10",
                            }
                        ],
                    },
                    {
                        "@type": "type.googleapis.com/google.rpc.Help",
                        "links": [
                            {
                                "description": "Learn more about Gemini API quotas",
                                "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                            }
                        ],
                    },
                    {
                        "@type": "type.googleapis.com/google.rpc.RetryInfo",
                        "retryDelay": f"{delay}s",
                    },
                ],
            )
        if scenario == "server_error":
            return self._error(
                500,
                "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
                "INTERNAL",
            )
        if scenario == "overloaded":
            return self._error(
                503, "The model is overloaded. Please try again later.", "UNAVAILABLE"
            )
        if scenario == "timeout":
            return self._error(
                504, "Deadline expired before operation could complete.", "DEADLINE_EXCEEDED"
            )
        return self._error(status or 400, "Fake error requested.", "INVALID_ARGUMENT")

    def _usage(self, reply: Reply, answered: int, thought: int) -> dict[str, Any]:
        usage: dict[str, Any] = {"promptTokenCount": reply.prompt_tokens}
        if answered:
            usage["candidatesTokenCount"] = answered
        usage["totalTokenCount"] = reply.prompt_tokens + answered + thought
        usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": reply.prompt_tokens}]
        if thought:
            usage["thoughtsTokenCount"] = thought
        return usage

    def _chunk(
        self,
        reply: Reply,
        parts: list[dict[str, Any]],
        finish: str | None,
        answered: int,
        thought: int,
    ) -> bytes:
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
        if finish:
            candidate["finishReason"] = finish
        candidate["index"] = 0
        chunk: dict[str, Any] = {"candidates": [candidate]}
        if not reply.controls.no_usage:
            chunk["usageMetadata"] = self._usage(reply, answered, thought)
        chunk["modelVersion"] = reply.model
        chunk["responseId"] = reply.rid
        return _data(chunk, b"\r\n\r\n", _spaced)

    def frames(self, reply: Reply) -> list[Frame]:
        if reply.controls.blocked:
            chunk = {
                "promptFeedback": {
                    "blockReason": "SAFETY",
                    "safetyRatings": [
                        {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"}
                    ],
                },
                "usageMetadata": {
                    "promptTokenCount": reply.prompt_tokens,
                    "totalTokenCount": reply.prompt_tokens,
                },
                "modelVersion": reply.model,
                "responseId": reply.rid,
            }
            return [Frame(_data(chunk, b"\r\n\r\n", _spaced))]
        finish = reply.controls.finish or ("MAX_TOKENS" if reply.finish == "length" else "STOP")
        frames: list[Frame] = []
        thoughts = len(reply.thoughts)
        for i, t in enumerate(reply.thoughts):
            part = {"text": t, "thought": True}
            frames.append(Frame(self._chunk(reply, [part], None, 0, i + 1), token=True))
        last = len(reply.answer) - 1
        for i, piece in enumerate(reply.answer):
            # The last chunk carries text and finishReason together, as live streams do.
            frames.append(
                Frame(
                    self._chunk(
                        reply, [{"text": piece}], finish if i == last else None, i + 1, thoughts
                    ),
                    token=True,
                )
            )
        if not reply.answer:
            frames.append(Frame(self._chunk(reply, [{"text": ""}], finish, 0, thoughts)))
        return frames

    def stream_error(self, reply: Reply) -> bytes:
        return _data(
            {
                "error": {
                    "code": 500,
                    "message": "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
                    "status": "INTERNAL",
                }
            },
            b"\r\n\r\n",
            _spaced,
        )

    def malformed(self, reply: Reply) -> bytes:
        return b'data: {"candidates": [{"content": {"parts": [{"text": "tru\r\n\r\n'


def _event(name: str, obj: Any) -> bytes:
    return b"event: " + name.encode() + b"\n" + _data(obj)


class Anthropic(Vendor):
    name = "anthropic"
    content_type = "text/event-stream; charset=utf-8"

    def max_tokens(self, body: dict[str, Any]) -> int | None:
        value = body.get("max_tokens")
        return int(value) if value else None

    def reject(self, headers: Mapping[str, str], reply: Reply) -> ErrorAnswer | None:
        if not headers.get("x-api-key"):
            return self._error(401, "authentication_error", "x-api-key header is required")
        if not headers.get("anthropic-version"):
            return self._error(
                400, "invalid_request_error", "anthropic-version: header is required"
            )
        if "max_tokens" not in reply.body:
            return self._error(400, "invalid_request_error", "max_tokens: Field required")
        return None

    def _error(
        self, status: int, type_: str, message: str, headers: list[tuple[str, str]] | None = None
    ) -> ErrorAnswer:
        body = {
            "type": "error",
            "error": {"type": type_, "message": message},
            "request_id": f"req_{uuid.uuid4().hex[:24]}",
        }
        return status, headers or [], _compact(body), JSON_TYPE

    def error(self, scenario: str, reply: Reply, status: int = 0) -> ErrorAnswer:
        c, m = reply.controls, reply.model
        retry = [("retry-after", c.retry_after or "5")]
        if scenario == "auth":
            return self._error(401, "authentication_error", "invalid x-api-key")
        if scenario in ("credits", "quota"):
            return self._error(
                400,
                "invalid_request_error",
                "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits.",
            )
        if scenario == "forbidden":
            return self._error(
                403,
                "permission_error",
                "Your API key does not have permission to use the specified resource.",
            )
        if scenario == "unknown_model":
            return self._error(404, "not_found_error", f"model: {m}")
        if scenario == "rate_limit":
            return self._error(
                429,
                "rate_limit_error",
                "This request would exceed the rate limit for your organization of 50,000 input tokens per minute. For details, refer to: https://docs.claude.com/en/api/rate-limits.",
                [*retry, ("anthropic-ratelimit-requests-remaining", "0")],
            )
        if scenario == "server_error":
            return self._error(500, "api_error", "Internal server error")
        if scenario == "overloaded":
            return self._error(529, "overloaded_error", "Overloaded", retry)
        return self._error(status or 400, "invalid_request_error", "Fake error requested.")

    def stream_headers(self, reply: Reply) -> list[tuple[str, str]]:
        return [("request-id", f"req_{reply.rid}")]

    def frames(self, reply: Reply) -> list[Frame]:
        usage_on = not reply.controls.no_usage
        message: dict[str, Any] = {
            "id": f"msg_{reply.rid}",
            "type": "message",
            "role": "assistant",
            "model": reply.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
        }
        if usage_on:
            message["usage"] = {
                "input_tokens": reply.prompt_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 1,
                "service_tier": "standard",
            }
        frames = [Frame(_event("message_start", {"type": "message_start", "message": message}))]
        index = 0
        if reply.thoughts:
            frames.append(
                self._block_start(index, {"type": "thinking", "thinking": "", "signature": ""})
            )
            frames.append(Frame(_event("ping", {"type": "ping"})))
            for t in reply.thoughts:
                delta = {"type": "thinking_delta", "thinking": t}
                frames.append(self._delta(index, delta, token=True))
            frames.append(self._delta(index, {"type": "signature_delta", "signature": "ZmFrZQ=="}))
            frames.append(
                Frame(_event("content_block_stop", {"type": "content_block_stop", "index": index}))
            )
            index += 1
        frames.append(self._block_start(index, {"type": "text", "text": ""}))
        if not reply.thoughts:
            frames.append(Frame(_event("ping", {"type": "ping"})))
        for piece in reply.answer:
            frames.append(self._delta(index, {"type": "text_delta", "text": piece}, token=True))
        frames.append(
            Frame(_event("content_block_stop", {"type": "content_block_stop", "index": index}))
        )
        stop = reply.controls.finish or ("max_tokens" if reply.finish == "length" else "end_turn")
        delta_event: dict[str, Any] = {
            "type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": None},
        }
        if usage_on:
            delta_event["usage"] = {"output_tokens": reply.completion_tokens}
        frames.append(Frame(_event("message_delta", delta_event)))
        frames.append(Frame(_event("message_stop", {"type": "message_stop"})))
        return frames

    def _block_start(self, index: int, block: dict[str, Any]) -> Frame:
        event = {"type": "content_block_start", "index": index, "content_block": block}
        return Frame(_event("content_block_start", event))

    def _delta(self, index: int, delta: dict[str, Any], token: bool = False) -> Frame:
        event = {"type": "content_block_delta", "index": index, "delta": delta}
        return Frame(_event("content_block_delta", event), token=token)

    def stream_error(self, reply: Reply) -> bytes:
        return _event(
            "error",
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        )

    def malformed(self, reply: Reply) -> bytes:
        return b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_de\n\n'


VENDORS: dict[str, Vendor] = {
    v.name: v for v in (OpenAI(), Compat(), OpenRouter(), Perplexity(), Gemini(), Anthropic())
}
_ROUTES = {
    ("openai", "/chat/completions"),
    ("perplexity", "/chat/completions"),
    ("openrouter", "/chat/completions"),
    ("anthropic", "/messages"),
    ("compat", "/chat/completions"),
    ("compat", "/models"),
}


def _route(path: str) -> tuple[str, str] | None:
    """(vendor, endpoint) for a path, or None."""
    for vendor, prefix in VENDOR_PREFIXES.items():
        if not path.startswith(prefix + "/"):
            continue
        rest = path[len(prefix) :]
        if vendor == "gemini":
            if rest.startswith("/models/") and rest.endswith(":streamGenerateContent"):
                return vendor, "stream"
            return None
        return (vendor, rest) if (vendor, rest) in _ROUTES else None
    return None


# --- The server ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Incoming:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    raw: bytes


class _Connection:
    """A client connection's reader, with what was read but not yet used."""

    def __init__(self, reader: asyncio.StreamReader, number: int) -> None:
        self.reader = reader
        self.number = number  # the server's count of connections, from 1
        self.pending = bytearray()

    async def fill(self) -> bool:
        """Read what has arrived into `pending`; False at EOF."""
        data = await self.reader.read(65536)
        self.pending += data
        return bool(data)


class FakeProviderServer:
    """The fake vendor server. `await start()`, then `serve_forever()` or `close()`."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self._connections = itertools.count(1)
        self._scenarios: list[Scenario] = []
        self._lock = threading.Lock()  # the fixture scripts from the test thread
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.host = "127.0.0.1"
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = await asyncio.start_server(self._handle, host, port)
        self.host, self.port = self._server.sockets[0].getsockname()[:2]

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    # Scenarios and records --------------------------------------------------------------

    def script(
        self, vendor: str, model: str | None = None, times: int = 1, **controls: Any
    ) -> None:
        vendor = PROVIDER_VENDORS.get(vendor, vendor)
        if vendor not in VENDOR_PREFIXES:
            raise ValueError(f"unknown vendor {vendor!r}")
        with self._lock:
            self._scenarios.append(Scenario(vendor, model, times, controls))

    def reset(self) -> None:
        with self._lock:
            self._scenarios.clear()
            self.requests.clear()

    def _take_scenario(self, vendor: str, model: str) -> dict[str, Any]:
        with self._lock:
            for scenario in self._scenarios:
                if scenario.vendor == vendor and scenario.model in (None, model):
                    scenario.times -= 1
                    if scenario.times <= 0:
                        self._scenarios.remove(scenario)
                    return scenario.controls
        return {}

    # Connection handling ----------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            # One request after another, until the client or a fault closes the connection.
            conn = _Connection(reader, next(self._connections))
            while (incoming := await self._read(conn)) is not None:
                if not await self._serve(incoming, conn, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _read(self, conn: _Connection) -> _Incoming | None:
        while (end := conn.pending.find(b"\r\n\r\n")) < 0:
            if len(conn.pending) > 65536:
                raise asyncio.LimitOverrunError("request head too long", len(conn.pending))
            if not await conn.fill():
                if conn.pending:
                    raise asyncio.IncompleteReadError(bytes(conn.pending), None)
                return None  # the client closed an idle connection
        head = bytes(conn.pending[:end])
        del conn.pending[: end + 4]
        request_line, *lines = head.decode("latin-1").split("\r\n")
        parts = request_line.split(" ")
        if len(parts) != 3:
            return None
        headers: dict[str, str] = {}
        for line in lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length") or 0)
        while len(conn.pending) < length:
            if not await conn.fill():
                raise asyncio.IncompleteReadError(bytes(conn.pending), length)
        raw = bytes(conn.pending[:length])
        del conn.pending[:length]
        path, _, query = parts[1].partition("?")
        return _Incoming(parts[0], unquote(path), query, headers, raw)

    async def _serve(
        self, incoming: _Incoming, conn: _Connection, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request; return whether the connection may take another."""
        keep_alive = incoming.headers.get("connection", "").lower() != "close"
        wire = _Wire(writer, keep_alive)
        if incoming.path.startswith("/_fake/"):
            await self._control(incoming, wire)
            return keep_alive
        route = _route(incoming.path)
        if route is None:
            body = _compact({"error": {"message": f"No route for {incoming.path}"}})
            await wire.whole(404, body, JSON_TYPE, [])
            return keep_alive
        payload: Any
        try:
            payload = json.loads(incoming.raw) if incoming.raw else {}
        except ValueError:
            payload = None
        record = RecordedRequest(
            incoming.method, incoming.path, incoming.query, incoming.headers, payload, route[0]
        )
        record.connection = conn.number
        with self._lock:
            self.requests.append(record)
        responder = asyncio.create_task(self._respond(route, incoming, record, wire))
        watcher = asyncio.create_task(self._watch_hangup(conn))
        try:
            await asyncio.wait({responder, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            record.client_closed = not wire.finished
            for task in (responder, watcher):
                task.cancel()
            await asyncio.gather(responder, watcher, return_exceptions=True)
            record.finished.set()
        return keep_alive and wire.finished and not wire.broken

    async def _watch_hangup(self, conn: _Connection) -> None:
        # EOF here means the client hung up; anything it sends meanwhile (its next request,
        # once it has read this response) is kept for the next `_read`.
        while await conn.fill():
            pass

    async def _respond(
        self, route: tuple[str, str], incoming: _Incoming, record: RecordedRequest, wire: _Wire
    ) -> None:
        vendor = VENDORS[route[0]]
        body = record.json if isinstance(record.json, dict) else {}
        full_model = vendor.model(incoming.path, body)
        model, suffix = split_model(full_model)
        record.model = model
        controls = Controls.from_layers(
            controls_from_headers(incoming.headers), suffix, self._take_scenario(vendor.name, model)
        )
        reply = self._reply(vendor, model, body, controls, len(incoming.raw))
        if controls.fault == "hang":
            await asyncio.Event().wait()  # until the client gives up
        if route == ("compat", "/models"):
            await self._models(vendor, reply, wire)
        elif record.json is None or not isinstance(record.json, dict):
            answer = vendor.error("bad_request", reply)
            await wire.whole(*_whole_args(answer))
        elif controls.status:
            scenario = _SCENARIOS.get(controls.status, "other")
            await wire.whole(*_whole_args(vendor.error(scenario, reply, controls.status)))
        elif (refused := vendor.reject(incoming.headers, reply)) is not None:
            await wire.whole(*_whole_args(refused))
        else:
            await self._stream(vendor, reply, wire)
        wire.finished = True

    def _reply(
        self, vendor: Vendor, model: str, body: dict[str, Any], c: Controls, size: int
    ) -> Reply:
        answer = reply_pieces(c.tokens, c.text)
        finish = "stop"
        limit = vendor.max_tokens(body)
        if limit is not None and limit < len(answer):
            answer, finish = answer[:limit], "length"
        think = c.think
        if think is None:
            think = vendor.name == "perplexity" and model.startswith(
                ("sonar-reasoning", "sonar-deep-research")
            )
        return Reply(
            vendor=vendor.name,
            model=model,
            body=body,
            controls=c,
            answer=answer,
            thoughts=list(THOUGHT_PIECES) if think else [],
            finish=finish,
            prompt_tokens=c.prompt_tokens if c.prompt_tokens is not None else max(1, size // 10),
        )

    async def _models(self, vendor: Vendor, reply: Reply, wire: _Wire) -> None:
        if reply.controls.status:
            scenario = _SCENARIOS.get(reply.controls.status, "other")
            await wire.whole(*_whole_args(vendor.error(scenario, reply, reply.controls.status)))
            return
        data = [
            {"id": m, "object": "model", "created": 1730000000, "owned_by": "library"}
            for m in COMPAT_MODELS
        ]
        await wire.whole(200, _compact({"object": "list", "data": data}), JSON_TYPE, [])

    async def _stream(self, vendor: Vendor, reply: Reply, wire: _Wire) -> None:
        c = reply.controls
        frames = vendor.frames(reply)
        tokens = sum(f.token for f in frames)
        fault = c.fault if c.fault in _FAULTS - {"hang", "linger"} else ""
        fault_at = min(tokens, c.fault_at if c.fault_at is not None else tokens // 2)
        await wire.start(vendor.content_type, vendor.stream_headers(reply))
        sent = 0
        waited_ttft = False
        for frame in frames:
            if fault and sent == fault_at and (frame.token or sent == tokens):
                await self._fault(fault, vendor, reply, wire)
                return
            if not frame.keepalive and not waited_ttft:
                waited_ttft = True
                await asyncio.sleep(c.ttft_ms / 1000)
            elif frame.token and sent:
                await asyncio.sleep(c.pace_ms / 1000)
            await wire.chunk(frame.data)
            sent += frame.token
        if c.fault == "linger":
            await asyncio.Event().wait()  # every event sent, the body left open
        await wire.end()

    async def _fault(self, fault: str, vendor: Vendor, reply: Reply, wire: _Wire) -> None:
        if fault == "stall":
            await asyncio.Event().wait()
        if fault == "reset":
            wire.abort()
            return
        if fault == "malformed":
            await wire.chunk(vendor.malformed(reply))
        elif fault == "error":
            await wire.chunk(vendor.stream_error(reply))
        await wire.end()  # "cut" and the two above: a clean end with no terminal event

    async def _control(self, incoming: _Incoming, wire: _Wire) -> None:
        endpoint = incoming.path[len("/_fake/") :]
        if endpoint == "requests" and incoming.method == "GET":
            with self._lock:
                records = [r.to_dict() for r in self.requests]
            await wire.whole(200, _compact(records), JSON_TYPE, [])
        elif endpoint == "reset" and incoming.method == "POST":
            self.reset()
            await wire.whole(200, b'{"ok":true}', JSON_TYPE, [])
        elif endpoint == "script" and incoming.method == "POST":
            try:
                payload = json.loads(incoming.raw or b"null")
                items = payload if isinstance(payload, list) else [payload]
                for item in items:
                    item = dict(item)
                    self.script(
                        item.pop("vendor"),
                        item.pop("model", None),
                        int(item.pop("times", 1)),
                        **item,
                    )
            except (ValueError, KeyError, TypeError) as exc:
                await wire.whole(400, _compact({"error": {"message": str(exc)}}), JSON_TYPE, [])
                return
            await wire.whole(200, b'{"ok":true}', JSON_TYPE, [])
        else:
            await wire.whole(404, b'{"error":{"message":"unknown control"}}', JSON_TYPE, [])
        wire.finished = True


def _whole_args(answer: ErrorAnswer) -> tuple[int, bytes, str, list[tuple[str, str]]]:
    status, headers, body, content_type = answer
    return status, body, content_type, headers


def provider_settings(root: str, api_key: str = "fake-key") -> dict[str, dict[str, str]]:
    """settings.LLM_PROVIDERS pointing every provider at a fake served at `root`."""
    return {pid: {"api_key": api_key, "base_url": base_url(root, pid)} for pid in PROVIDER_VENDORS}


def env_lines(root: str, api_key: str = "fake-key") -> list[str]:
    """The environment that points the app's settings at a fake served at `root`."""
    lines: list[str] = []
    for pid, conf in provider_settings(root, api_key).items():
        prefix = pid.upper()
        lines += [f"{prefix}_BASE_URL={conf['base_url']}", f"{prefix}_API_KEY={conf['api_key']}"]
    return lines
