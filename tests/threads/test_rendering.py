from __future__ import annotations

import re

import pytest

from threads.rendering import render_markdown

PAYLOADS = [
    "<img src=x onerror=alert(1)>",
    "<script>alert(1)</script>",
    "[x](javascript:alert(1))",
    "[x](JaVaScRiPt:alert(1))",
    "[x](data:text/html,<script>alert(1)</script>)",
    "<a href='https://e.com' onclick='alert(1)'>a</a>",
    "![x](javascript:alert(1))",
    "```\n</code></pre><script>alert(1)</script>\n```",
    "```js onerror=alert(1)\nx\n```",
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_model_output_can_never_add_markup(payload):
    html = render_markdown(payload)
    assert "<script" not in html and "<img" not in html
    # No tag carries an event handler or a script/data URL; the text may mention them.
    assert not re.search(r"<[^>]*\son\w+\s*=", html)
    assert not re.search(r"(href|src)\s*=\s*\"?\s*(javascript|data):", html, re.I)


def test_links_open_safely_and_only_for_web_and_mail():
    html = render_markdown("[w](https://e.com) [m](mailto:a@b.c) [f](ftp://e.com)")
    assert '<a href="https://e.com" target="_blank" rel="noopener noreferrer nofollow">' in html
    assert '<a href="mailto:a@b.c" target="_blank"' in html
    assert 'href="ftp' not in html


def test_code_blocks_get_a_language_label_and_copy_button():
    html = render_markdown("```python\nprint('<b>')\n```")
    assert '<span class="code-lang">python</span>' in html
    assert '<button type="button" class="copy" aria-label="Copy code">Copy</button>' in html
    assert "print(&#x27;&lt;b&gt;&#x27;)" in html or "print('&lt;b&gt;')" in html


def test_tables_and_lists_render():
    html = render_markdown("- a\n- b\n\n| h |\n|---|\n| c |")
    assert "<ul>" in html and "<li>a</li>" in html and "<table>" in html and "<td>c</td>" in html
