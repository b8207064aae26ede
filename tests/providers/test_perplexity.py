from __future__ import annotations

from decimal import Decimal

import pytest

from providers.base import (
    ChatRequest,
    ErrorKind,
    Finish,
    FinishReason,
    ReasoningDelta,
    Source,
    Sources,
    TextDelta,
    Turn,
    Usage,
)
from providers.fake import THOUGHT, reply_text
from providers.perplexity import (
    PerplexityProvider,
    ThinkSplitter,
    alternating_messages,
    sources_of,
)
from tests.fake_server import chat, collect, failure


def _text(events) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def _reasoning(events) -> str:
    return "".join(e.text for e in events if isinstance(e, ReasoningDelta))


async def test_it_streams_text_sources_once_and_final_usage_with_cost(adapter, fake_provider):
    fake_provider.script("perplexity", tokens=5, prompt_tokens=28, cost=0.006)
    events = await collect(adapter(PerplexityProvider).stream(chat("sonar-pro")))

    assert _text(events) == reply_text(5)
    # Search results repeat in every chunk; they are reported once, with titles and dates.
    assert [e for e in events if isinstance(e, Sources)] == [
        Sources(
            (
                Source("https://example.com/source-1", "Source 1", "2025-03-01"),
                Source("https://example.com/source-2", "Source 2", "2025-03-02"),
            )
        )
    ]
    assert events[-2:] == [
        Usage(prompt_tokens=28, completion_tokens=5, vendor_cost_usd=Decimal("0.006")),
        Finish(FinishReason.STOP),
    ]


async def test_sources_come_before_the_first_text(adapter):
    events = await collect(adapter(PerplexityProvider).stream(chat("sonar")))
    assert isinstance(events[0], Sources)


async def test_think_tags_split_across_chunks_become_reasoning(adapter):
    events = await collect(adapter(PerplexityProvider).stream(chat("sonar-reasoning-pro~tokens=3")))

    assert _reasoning(events) == THOUGHT
    assert _text(events) == reply_text(3)
    assert "<" not in _text(events)
    usage = events[-2]
    assert isinstance(usage, Usage) and usage.reasoning_tokens == 5


async def test_eof_after_the_finish_chunk_is_the_normal_end(adapter, fake_provider):
    await collect(adapter(PerplexityProvider).stream(chat("sonar")))
    assert fake_provider.last_request.json["stream"] is True


async def test_eof_before_the_finish_chunk_is_a_cut(adapter):
    events, exc = await failure(adapter(PerplexityProvider).stream(chat("sonar~cut~tokens=4")))

    assert _text(events) == reply_text(2)
    assert exc.code == "stream_cut"


async def test_consecutive_turns_of_one_role_are_merged(adapter, fake_provider):
    request = ChatRequest(
        provider="",
        model="sonar",
        system="Cite.",
        turns=(
            Turn("assistant", "Welcome!"),
            Turn("user", "One"),
            Turn("user", "Two"),
            Turn("assistant", "Answer"),
            Turn("user", "Three"),
        ),
    )
    # The fake rejects non-alternating turns with Perplexity's 400, so success proves it.
    await collect(adapter(PerplexityProvider).stream(request))

    assert fake_provider.last_request.json["messages"] == alternating_messages(request)
    roles = [m["role"] for m in fake_provider.last_request.json["messages"]]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
    assert fake_provider.last_request.json["messages"][3]["content"] == "One\n\nTwo"


async def test_html_401_reads_as_a_bad_key(adapter):
    _, exc = await failure(adapter(PerplexityProvider).stream(chat("sonar~401")))

    assert (exc.kind, exc.code, exc.status) == (ErrorKind.FATAL, "auth", 401)
    assert exc.message == "Perplexity rejected the key: set PERPLEXITY_API_KEY."
    assert exc.vendor_message == "401 Authorization Required"


async def test_an_invalid_model_400_reads_as_unknown_model(adapter, fake_provider):
    fake_provider.script("perplexity", status=404)
    _, exc = await failure(adapter(PerplexityProvider).stream(chat("llama-3.1-sonar-small")))

    assert (exc.status, exc.code) == (400, "unknown_model")
    assert (
        exc.message == "Perplexity has no model 'llama-3.1-sonar-small' (or the key cannot use it)."
    )


async def test_rate_limit(adapter, fake_provider):
    fake_provider.script("perplexity", status=429, retry_after="2")
    _, exc = await failure(adapter(PerplexityProvider).stream(chat("sonar")))

    assert (exc.kind, exc.retry_after) == (ErrorKind.RATE_LIMITED, 2.0)


def test_citations_alone_become_sources():
    assert sources_of({"citations": ["https://a", "https://b"], "search_results": []}) == (
        Source("https://a"),
        Source("https://b"),
    )


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_the_splitter_routes_thoughts_whatever_the_chunking(size):
    content = "<think>\nWeigh it.\n</think>\n\nThe answer [1]."
    splitter = ThinkSplitter()
    pieces = []
    for i in range(0, len(content), size):
        pieces += splitter.feed(content[i : i + size])
    pieces += splitter.flush()

    assert _reasoning(pieces) == "Weigh it."
    assert _text(pieces) == "The answer [1]."


def test_the_splitter_leaves_plain_text_and_lone_brackets_alone():
    splitter = ThinkSplitter()
    pieces = splitter.feed("a < b and <thin") + splitter.feed("gs>") + splitter.flush()
    assert _text(pieces) == "a < b and <things>"
