"""Conversation shaping shared by vendors that demand strict user/assistant alternation
(Perplexity, Anthropic, Gemini)."""

from __future__ import annotations

from collections.abc import Iterable

from .base import Turn

# Stands in when a thread opens with an assistant turn (a greeting), so that turn is still
# sent to vendors that require the user to speak first.
OPENING_TURN = "(conversation start)"


def alternating(turns: Iterable[Turn]) -> list[Turn]:
    """One turn per run of a role (joined by a blank line), starting with the user.

    A failed or partial reply followed by a new question therefore never makes the next
    request invalid.
    """
    merged: list[Turn] = []
    for turn in turns:
        if merged and merged[-1].role == turn.role:
            merged[-1] = Turn(turn.role, merged[-1].content + "\n\n" + turn.content)
        else:
            merged.append(turn)
    if merged and merged[0].role != "user":
        merged.insert(0, Turn("user", OPENING_TURN))
    return merged
