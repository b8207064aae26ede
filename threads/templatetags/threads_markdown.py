from __future__ import annotations

from django import template
from django.utils.safestring import SafeString

from threads.rendering import render_markdown

register = template.Library()


@register.filter(name="markdown")
def markdown_filter(text: str) -> SafeString:
    """A reply's Markdown as sanitised HTML (see threads/rendering.py)."""
    return render_markdown(text or "")
