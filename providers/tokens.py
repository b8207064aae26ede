"""Token estimates for streams that end without the vendor's usage (cut off, cancelled)."""

from __future__ import annotations

from collections.abc import Iterable

from .base import Turn


def estimate_tokens(text: str) -> int:
    # About four characters a token for English prose with the common BPE vocabularies.
    if not text:
        return 0
    return max(1, round(len(text) / 4))


def estimate_prompt_tokens(system: str, turns: Iterable[Turn]) -> int:
    # Each message costs a few tokens of framing on top of its text.
    total = estimate_tokens(system) + (4 if system else 0)
    for turn in turns:
        total += estimate_tokens(turn.content) + 4
    return total
