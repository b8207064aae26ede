"""Model output as Markdown, rendered to HTML that can never run script.

Two layers, because the model's text is untrusted input:

1. markdown-it-py with `html=False` turns raw HTML in the text into escaped text, and its
   `validateLink` drops `javascript:`/`vbscript:`/`data:` links;
2. nh3 then keeps only an allowlist of tags, attributes and URL schemes (http, https,
   mailto), and stamps every link with `rel="noopener noreferrer nofollow"`
   and `target="_blank"`.

While a reply streams, the page appends escaped plain text (the `frame-delta` partial); at
`done` the consumer swaps in the whole message rendered here. The streaming body uses the
same font, line height and paragraph spacing, so the swap changes markup, not layout.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import nh3
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe
from markdown_it import MarkdownIt

ALLOWED_TAGS = {
    "a", "blockquote", "br", "button", "code", "del", "div", "em", "h1", "h2", "h3", "h4",
    "h5", "h6", "hr", "li", "ol", "p", "pre", "s", "span", "strong", "table", "tbody", "td",
    "th", "thead", "tr", "ul",
}  # fmt: skip
ALLOWED_ATTRIBUTES: dict[str, set[str]] = {
    "a": {"href", "title"},
    "ol": {"start"},
    "td": {"style"},
    "th": {"style"},
    "button": {"type", "aria-label"},
}
URL_SCHEMES = {"http", "https", "mailto"}
LINK_REL = "noopener noreferrer nofollow"
# The only classes the renderer itself emits; anything else is dropped.
ALLOWED_CLASSES = {
    "div": {"code", "code-bar"},
    "span": {"code-lang"},
    "button": {"copy"},
}


def _fence(self: Any, tokens: list[Any], idx: int, options: Any, env: Any) -> str:
    """A fenced block: a bar with the language label and a copy button, then the code."""
    token = tokens[idx]
    lang = token.info.strip().split(maxsplit=1)[0][:32] if token.info.strip() else ""
    label = escape(lang) if lang else "text"
    return (
        '<div class="code"><div class="code-bar"><span class="code-lang">'
        + label
        + '</span><button type="button" class="copy" aria-label="Copy code">Copy</button>'
        + "</div><pre><code>"
        + escape(token.content)
        + "</code></pre></div>\n"
    )


@cache
def _markdown() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "breaks": False})
    md.enable(["table", "strikethrough"])
    md.add_render_rule("fence", _fence)
    md.add_render_rule("code_block", _fence)
    return md


def _clean(html: str) -> str:
    return nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes=URL_SCHEMES,
        link_rel=LINK_REL,
        set_tag_attribute_values={"a": {"target": "_blank"}},
        allowed_classes=ALLOWED_CLASSES,
        filter_style_properties={"text-align"},
        strip_comments=True,
    )


def render_markdown(text: str) -> SafeString:
    """Sanitised HTML for a reply's Markdown. Safe to put in a template unescaped."""
    if not text:
        return mark_safe("")
    return mark_safe(_clean(_markdown().render(text)))  # noqa: S308 - cleaned by nh3 above
