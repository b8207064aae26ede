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

The package: `controls` (what a request asks for, the reply text, recorded requests),
`wire` (HTTP/1.1 as the fake writes it), `vendor` (what the vendors share), one module per
vendor (`openai` also holds the compat and OpenRouter vendors), and `server`.
"""

from __future__ import annotations

from .controls import (
    COMPAT_MODELS,
    PROVIDER_VENDORS,
    THOUGHT,
    THOUGHT_PIECES,
    VENDOR_PREFIXES,
    Controls,
    RecordedRequest,
    Scenario,
    base_url,
    controls_from_headers,
    reply_pieces,
    reply_text,
    split_model,
)
from .server import FakeProviderServer, env_lines, provider_settings

__all__ = [
    "COMPAT_MODELS",
    "PROVIDER_VENDORS",
    "THOUGHT",
    "THOUGHT_PIECES",
    "VENDOR_PREFIXES",
    "Controls",
    "FakeProviderServer",
    "RecordedRequest",
    "Scenario",
    "base_url",
    "controls_from_headers",
    "env_lines",
    "provider_settings",
    "reply_pieces",
    "reply_text",
    "split_model",
]
