"""A thread as a downloadable file: Markdown for people, JSON for programs."""

from __future__ import annotations

from typing import Any

from django.utils.text import slugify

from .models import Message, Thread


def _messages(thread: Thread) -> list[Message]:
    return list(thread.messages.order_by("created", "id"))


def filename(thread: Thread, fmt: str) -> str:
    return f"{slugify(thread.display_title) or 'chat'}-{str(thread.code)[:8]}.{fmt}"


def as_markdown(thread: Thread) -> str:
    lines = [f"# {thread.display_title}", ""]
    for m in _messages(thread):
        if m.role == Message.Role.USER:
            lines += ["## You", "", m.content, ""]
            continue
        heading = f"## Assistant ({m.model})" if m.model else "## Assistant"
        lines += [heading, "", m.content or f"_({m.status})_", ""]
        for n, source in enumerate(m.sources or [], 1):
            lines.append(f"{n}. [{source.get('title') or source.get('url')}]({source.get('url')})")
        if m.sources:
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def as_dict(thread: Thread) -> dict[str, Any]:
    return {
        "id": str(thread.code),
        "title": thread.display_title,
        "created": thread.created.isoformat(),
        "provider": thread.provider,
        "model": thread.model,
        "messages": [
            {
                "id": str(m.code),
                "role": m.role,
                "content": m.content,
                "reasoning": m.reasoning or None,
                "sources": m.sources,
                "status": m.status,
                "provider": m.provider or None,
                "model": m.model or None,
                "chain": m.chain,
                "usage": m.usage_dict(),
                "cost_usd": m.cost_str(),
                "ttft_ms": m.ttft_ms,
                "latency_ms": m.latency_ms,
                "created": m.created.isoformat(),
            }
            for m in _messages(thread)
        ],
    }
