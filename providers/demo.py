"""The built-in demo provider: no key, no network, a realistic pace.

It goes through the same interface as the real adapters, so everything above it (queue,
retries, frames, saves, telemetry) is exercised for real.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

from .base import ChatRequest, Event, Finish, FinishReason, Provider, TextDelta, Usage
from .tokens import estimate_prompt_tokens

_SENTENCES = (
    "Streaming keeps the first words on screen while the rest is still being written.",
    "This reply comes from the built-in demo provider, so no key or network is needed.",
    "Every message stores its tokens and cost, and every attempt its time to first token.",
    "You can stop a reply at any moment; the text so far is kept and marked stopped.",
    "Reload the page mid-stream and the reply picks up where it was, live.",
    "Point the app at a real provider by setting its API key in the environment.",
    "Rate limits are queued, failures are retried with backoff, then another model answers.",
    "Markdown such as **bold**, `code` and lists renders once the reply is complete.",
    "The same engine serves the browser over WebSockets and programs over Server-Sent Events.",
    "Organisations are tenants: nobody sees another organisation's threads.",
)


def demo_reply(prompt: str, sentences: int = 4) -> list[str]:
    """A deterministic reply for a prompt, split into token-sized pieces."""
    seed = int(hashlib.sha256(prompt.encode()).hexdigest(), 16)
    chosen = [_SENTENCES[(seed >> (4 * i)) % len(_SENTENCES)] for i in range(sentences)]
    quoted = prompt.strip().splitlines()[0][:80] if prompt.strip() else "nothing"
    text = f"You said: “{quoted}”. " + " ".join(chosen)
    pieces: list[str] = []
    for i, word in enumerate(text.split(" ")):
        pieces.append(word if i == 0 else " " + word)
    return pieces


class DemoProvider(Provider):
    id = "demo"
    display_name = "Demo"
    needs_key = False

    async def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        ttft_s = float(self.config.extra.get("ttft_ms", "250")) / 1000
        tokens_per_s = float(self.config.extra.get("tokens_per_s", "40")) or 1e9
        last_user = next((t.content for t in reversed(request.turns) if t.role == "user"), "")
        pieces = demo_reply(last_user)
        limit = request.max_tokens or len(pieces)
        await asyncio.sleep(ttft_s)
        for i, piece in enumerate(pieces[:limit]):
            if i:
                await asyncio.sleep(1 / tokens_per_s)
            yield TextDelta(piece)
        yield Usage(
            prompt_tokens=estimate_prompt_tokens(request.system, request.turns),
            completion_tokens=min(limit, len(pieces)),
        )
        yield Finish(FinishReason.LENGTH if limit < len(pieces) else FinishReason.STOP)
