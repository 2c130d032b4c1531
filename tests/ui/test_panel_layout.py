"""The chat panel's geometry with a long conversation: one scrolling list, nothing crushed.

A conversation of 40 messages (headings, lists, code blocks, a table, tool lines) is
written to the store before the panel opens, so the panel starts far taller than the
sidebar. Each check measures the page: exactly one element scrolls (the message list),
no message or control is shorter than its content, the controls keep their natural
height, and the list follows the newest text only while the user is at the bottom.
Screenshots of each state go to ``test-artifacts/ui/``.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from model_server import Behavior

pytestmark = pytest.mark.timeout(300)
LOAD = "%load_ext oblix_jupyter"
PANEL = "#jp-right-stack .jp-OblixChat .oblix-chat"
NATURAL_CONTROL_PX = 28  # ipywidgets' inline height (--jp-widgets-inline-height): buttons, fields, pickers
PROGRESS_WITHIN_MS = 200
SHORT_ANSWER = "Done: `monthly` now has 3 regions.\n\n```python\nmonthly.unstack().plot()\n```\n\nThe plot shows **north** ahead."

ANSWER = """## Revenue by region, step {n}

The data has **{n} problems** worth fixing before the plot:

1. `units` has missing values: decide whether to drop or fill them.
2. `region` mixes cases (`North`, `north`), so normalise it first.
3. The dates are strings; parse them with `pd.to_datetime`.

```python
sales["region"] = sales["region"].str.lower()
sales["date"] = pd.to_datetime(sales["date"])
monthly = sales.groupby([sales.date.dt.to_period("M"), "region"])["revenue"].sum()
```

| region | revenue | share |
|--------|---------|-------|
| north  | 120.5   | 41 %  |
| south  | 98.0    | 33 %  |
| east   | 76.2    | 26 %  |

- Then plot `monthly.unstack().plot()`.
- A long line to wrap in a narrow sidebar: the quick brown fox jumps over the lazy dog, again and again, until the line has to wrap several times.
"""
TOOLS = [
    {"name": "describe_variable", "summary": "looked at `sales`, value counts of `region`", "result": "north 41\nsouth 33\neast 26", "ok": True},
    {"name": "query_rows", "summary": "looked at `sales`: rows where units isna, 5 of 12 shown", "result": "5 rows", "ok": True},
]

# Everything about the panel's layout that the tests assert on, measured in the page.
MEASURE = """(selector) => {
    const chat = document.querySelector(selector);
    const list = chat.querySelector('.oblix-scroll');
    const shown = (el) => el.getClientRects().length > 0 && getComputedStyle(el).visibility !== 'hidden';
    const name = (el) => el.tagName.toLowerCase() + [...el.classList].map((c) => '.' + c).join('');
    const box = (el) => { const r = el.getBoundingClientRect(); return {top: r.top, bottom: r.bottom, height: r.height, width: r.width}; };
    // Form fields scroll their own text by design; they are controls, measured by height below.
    const inField = (el) => !!el.closest('textarea, select, input');
    const scrolling = [chat, ...chat.querySelectorAll('*')].filter((el) =>
        shown(el) && !inField(el) && ['auto', 'scroll', 'hidden', 'clip'].includes(getComputedStyle(el).overflowY)
        && el.scrollHeight > el.clientHeight + 1);
    const messages = [...list.querySelectorAll('.oblix-message')];
    const controls = [...chat.children].filter((el) => el !== list && shown(el));
    const crushed = [...messages, ...controls].filter((el) => el.scrollHeight > el.clientHeight + 1)
        .map((el) => `${name(el)} ${el.clientHeight} < ${el.scrollHeight}: ${el.innerText.slice(0, 40)}`);
    const heights = {};
    for (const [label, css] of [['input', '.oblix-input textarea'], ['send', 'button.oblix-send'], ['explain', '.oblix-explain-toggle'],
                                ['picker', 'select'], ['search', '.oblix-search input'], ['context', '.oblix-context']]) {
        const el = chat.querySelector(css);
        heights[label] = el ? el.getBoundingClientRect().height : null;
    }
    const last = messages[messages.length - 1];
    return {
        scrolling: scrolling.map(name), crushed, heights, messages: messages.length,
        chat: box(chat), list: box(list), last: last ? box(last) : null,
        scrollTop: list.scrollTop, scrollHeight: list.scrollHeight, clientHeight: list.clientHeight,
    };
}"""


def realistic_conversation(store: Any, notebook: str, pairs: int = 20) -> str:
    """A session of ``pairs`` questions and long answers, bound to ``notebook``; returns its id."""
    session_id = store.create_session(title="long conversation")
    for n in range(1, pairs + 1):
        attached = [figure_entry(store, session_id)] if n == pairs else None  # the last question carries a plot
        store.save_message(
            session_id, f"Question {n}: what should I fix in `sales` before plotting revenue by region?", role="user", attachments=attached
        )
        fields: dict[str, Any] = {"model": "openai/test-model"}
        if n % 3 == 0:
            fields["tools"] = TOOLS
        store.save_message(session_id, ANSWER.format(n=n), role="assistant", **fields)
    store.bind(notebook, session_id)
    return session_id


def figure_entry(store: Any, session_id: str) -> dict[str, Any]:
    """A 1,024×768 plot-like PNG kept with the session, as a turn keeps an attached figure: its ``attachments`` entry."""
    from PIL import Image, ImageDraw

    picture = Image.new("RGB", (1024, 768), "white")
    ImageDraw.Draw(picture).line([(40, 700), (400, 500), (700, 120), (1000, 300)], fill="navy", width=6)
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    attachment_id = store.save_attachment(session_id, buffer.getvalue())
    return {"id": attachment_id, "mime": "image/png", "width": 1024, "height": 768, "label": "figure from cell 7"}


def assert_thumbnail_fits(chat: Any, where: str) -> None:
    """The attached plot shows as a decoded thumbnail, at most 240×160 px, inside its message."""
    picture = chat.locator(".oblix-thumb img").last
    assert picture.evaluate("(img) => img.complete && img.naturalWidth === 1024"), f"{where}: the thumbnail decoded"
    shown, message = picture.bounding_box(), chat.locator(".oblix-user").last.bounding_box()
    assert shown["width"] <= 240.5 and shown["height"] <= 160.5 and shown["width"] > 40, f"{where}: {shown}"
    assert message["x"] - 0.5 <= shown["x"] and shown["x"] + shown["width"] <= message["x"] + message["width"] + 0.5, f"{where}: {shown} {message}"


def measure(jlab: Any, selector: str = PANEL) -> dict[str, Any]:
    return jlab.evaluate(f"async (selector) => ({MEASURE})(selector)", selector)


def set_sidebar_width(jlab: Any, width: int) -> None:
    """Drag the handle between the notebook and the right sidebar, as a user would, until the sidebar is ``width`` px wide."""
    page = jlab.page
    for _ in range(3):
        stack = page.locator("#jp-right-stack").bounding_box()
        if abs(stack["width"] - width) <= 2:
            return
        handle = page.locator("#jp-main-split-panel > .lm-SplitPanel-handle:not(.lm-mod-hidden)").last.bounding_box()
        x, y = handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x + stack["width"] - width, y, steps=5)
        page.mouse.up()
    assert abs(page.locator("#jp-right-stack").bounding_box()["width"] - width) <= 2


def assert_one_scrolling_list(layout: dict[str, Any], where: str) -> None:
    context = f"{where}: {json.dumps(layout)[:1500]}"
    assert len(layout["scrolling"]) == 1 and "oblix-scroll" in layout["scrolling"][0], f"exactly one element scrolls, the message list; {context}"
    assert layout["scrollHeight"] > layout["clientHeight"], context
    assert not layout["crushed"], f"messages and controls at their natural height; {context}"
    for control, height in layout["heights"].items():
        assert height is not None and height >= NATURAL_CONTROL_PX - 0.5, f"{control} is {height} px; {context}"


def assert_at_the_newest(layout: dict[str, Any], where: str) -> None:
    """The list shows its end: the newest message's last line is in view (all of it, when it fits)."""
    last, shown = layout["last"], layout["list"]
    assert abs(layout["scrollTop"]) <= 1, f"{where}: the list is at its newest message; {layout}"
    assert shown["top"] - 1 <= last["bottom"] <= shown["bottom"] + 1, f"{where}: {layout}"
    if last["height"] <= shown["height"]:
        assert last["top"] >= shown["top"] - 1, f"{where}: the newest message is fully visible; {layout}"


def open_long_conversation(jlab: Any, notebook: str, sources: tuple[str, ...] = (LOAD,)) -> Any:
    """The notebook bound to a 40-message conversation, with its chat docked in the sidebar."""
    jlab.lab.write_notebook(notebook, list(sources))
    realistic_conversation(jlab.lab.store(), notebook)
    jlab.open_notebook(notebook)
    jlab.run_cell(0)
    chat = jlab.chat_from_toolbar()
    chat.locator(".oblix-message").nth(39).wait_for()
    return chat


def set_theme(jlab: Any, theme: str) -> None:
    jlab.evaluate("async (theme) => { await jupyterapp.commands.execute('apputils:change-theme', {theme}); }", theme)
    light = "true" if theme == "JupyterLab Light" else "false"
    jlab.page.wait_for_function(f"() => document.body.dataset.jpThemeLight === '{light}'")
    jlab.page.locator("#jupyterlab-splash").wait_for(state="detached")  # the flag flips before the theme's splash goes


def test_a_long_conversation_scrolls_as_one_list_at_every_sidebar_width_and_in_the_dark_theme(jlab, server):
    server.default = Behavior(reply=SHORT_ANSWER, token_delay=0.01)
    chat = open_long_conversation(jlab, "layout/widths.ipynb")
    for width in (250, 400, 700):
        set_sidebar_width(jlab, width)
        layout = measure(jlab)
        jlab.screenshot(f"panel-layout-{width}px")
        assert layout["messages"] == 40
        assert abs(layout["chat"]["width"] - width) <= 16, layout["chat"]
        assert_one_scrolling_list(layout, f"{width} px")
        assert layout["list"]["height"] >= layout["chat"]["height"] / 2, f"the list takes the room the controls leave; {layout}"
        assert_at_the_newest(layout, f"{width} px, when opened")
        assert_thumbnail_fits(chat, f"{width} px")

    set_theme(jlab, "JupyterLab Dark")
    try:
        set_sidebar_width(jlab, 400)
        chat.locator(".oblix-input textarea").fill("one more question")
        chat.locator(".oblix-input textarea").press("Enter")
        chat.locator(".oblix-assistant", has_text="now has 3 regions").wait_for()
        chat.locator("button.oblix-send:not([disabled])").wait_for()
        layout = measure(jlab)
        jlab.screenshot("panel-layout-dark-after-an-answer")
        assert layout["messages"] == 42
        assert_one_scrolling_list(layout, "dark theme")
        assert_at_the_newest(layout, "after a new answer")
        chat.locator(".oblix-thumb").last.scroll_into_view_if_needed()
        assert_thumbnail_fits(chat, "dark theme")
        jlab.screenshot("panel-thumbnail-dark")
    finally:
        set_theme(jlab, "JupyterLab Light")


# The page samples where a message the user is reading stands, every frame, while the answer streams below it.
WATCH_READING = """async (selector) => {
    const list = document.querySelector(selector).querySelector('.oblix-scroll');
    list.scrollTop = -1500;  // a column-reverse list counts up from its newest end
    await new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)));
    const view = list.getBoundingClientRect();
    const reading = [...list.querySelectorAll('.oblix-message')].find((message) => message.getBoundingClientRect().top >= view.top);
    const tops = window.readingTops = [];
    const sample = () => { tops.push(reading.getBoundingClientRect().top); if (!window.stopSampling) requestAnimationFrame(sample); };
    sample();
    return reading.innerText.slice(0, 60);
}"""


def test_the_list_follows_the_answer_at_the_bottom_and_stays_put_when_scrolled_up(jlab, server):
    words = " ".join(f"word{n}" for n in range(120))
    server.default = Behavior(reply=words, token_delay=0.02, stall_after=5)
    chat = open_long_conversation(jlab, "layout/reading.ipynb")
    set_sidebar_width(jlab, 400)
    chat.locator(".oblix-input textarea").fill("a long answer please")
    chat.locator(".oblix-input textarea").press("Enter")
    chat.locator(".oblix-assistant", has_text="word0").wait_for()  # the first text shows at once; the rest waits for release()
    assert_at_the_newest(measure(jlab), "while it streams at the bottom")
    jump = chat.locator("button.oblix-jump")
    assert jump.evaluate("(el) => getComputedStyle(el).visibility") == "hidden", "no jump button at the newest message"

    reading = jlab.evaluate(f"async (selector) => ({WATCH_READING})(selector)", PANEL)
    server.release()
    chat.locator(".oblix-assistant", has_text="word119").wait_for()
    chat.locator("button.oblix-send:not([disabled])").wait_for()
    sampled = jlab.evaluate("async () => window.readingTops.length")
    jlab.page.wait_for_function(f"() => window.readingTops.length >= {sampled + 10}")  # frames after the stored answer replaced the streamed one
    tops = jlab.evaluate("async () => { window.stopSampling = true; return window.readingTops; }")
    jlab.screenshot("panel-scrolled-up-after-streaming")
    assert len(tops) > 10 and max(tops) - min(tops) <= 1, f"{reading!r} moved while the answer streamed: {sorted(set(tops))}"
    layout = measure(jlab)
    assert layout["scrollTop"] < -1000, "the list stayed where the user scrolled"

    assert jump.evaluate("(el) => getComputedStyle(el).visibility") == "visible"
    box, shown = jump.bounding_box(), layout["list"]
    assert shown["top"] <= box["y"] and box["y"] + box["height"] <= shown["bottom"], "the jump button floats over the list"
    jump.click()
    jlab.page.wait_for_function(
        "(selector) => { const list = document.querySelector(selector + ' .oblix-scroll');"
        " return list.querySelectorAll('.oblix-message').length === 42 && Math.abs(list.scrollTop) <= 1; }",
        arg=PANEL,
    )
    layout = measure(jlab)
    jlab.screenshot("panel-after-jump-to-latest")
    assert_at_the_newest(layout, "after jump to latest")
    assert "word119" in chat.locator(".oblix-message").last.inner_text()
    jlab.wait_until(lambda: jump.evaluate("(el) => getComputedStyle(el).visibility") == "hidden", 10, "the jump button to hide")


# When the progress line first shows in the panel, in ms after the Enter that sent the prompt.
WATCH_PROGRESS = """async (selector) => {
    const chat = document.querySelector(selector);
    window.addEventListener('keydown', (event) => { if (event.key === 'Enter') window.enterAt = performance.now(); }, {capture: true, once: true});
    new MutationObserver((_, observer) => {
        const working = chat.querySelector('.oblix-waiting');
        if (working && working.getClientRects().length && window.enterAt !== undefined) {
            window.progressAfter = performance.now() - window.enterAt;
            window.progressText = working.closest('.jp-OutputArea-output').innerText;  // the view's own classes may come a moment later
            observer.disconnect();
        }
    }).observe(chat, {subtree: true, childList: true, characterData: true});
}"""


def test_pressing_enter_shows_which_model_is_working_within_200_ms(jlab, server):
    server.default = Behavior(reply="Here at last.", first_token_delay=2.0)
    jlab.lab.write_notebook("layout/progress.ipynb", [LOAD])
    jlab.open_notebook("layout/progress.ipynb")
    jlab.run_cell(0)
    chat = jlab.chat_from_toolbar()
    chat.wait_for()
    textarea = chat.locator(".oblix-input textarea")
    textarea.fill("are you there?")
    jlab.evaluate(f"async (selector) => ({WATCH_PROGRESS})(selector)", PANEL)
    textarea.press("Enter")
    jlab.page.wait_for_function("() => window.progressAfter !== undefined")
    after, text = jlab.evaluate("async () => [window.progressAfter, window.progressText]")
    jlab.screenshot("panel-progress-before-the-first-token")
    print(f"progress line shown {after:.0f} ms after Enter")
    assert after <= PROGRESS_WITHIN_MS, f"the progress line showed {after:.0f} ms after Enter"
    assert "Waiting for openai/test-model" in text
    assert textarea.input_value() == "", "the prompt left the box when sent"
    assert chat.locator("button.oblix-jump").evaluate("(el) => getComputedStyle(el).visibility") == "hidden", "nothing to jump to"
    chat.get_by_text("Waiting for openai/test-model… 1 s").wait_for()
    chat.locator(".oblix-assistant", has_text="Here at last.").wait_for()
    assert chat.locator(".oblix-waiting").count() == 0, "the text replaced the waiting line"


def test_oblix_chat_in_a_cell_output_scrolls_as_one_list(jlab, server):
    notebook = "layout/in-a-cell.ipynb"
    jlab.lab.write_notebook(notebook, [LOAD, "%oblix chat"])
    realistic_conversation(jlab.lab.store(), notebook)
    jlab.open_notebook(notebook)
    jlab.run_cell(0)
    jlab.run_cell(1)
    output = jlab.output_locator(1)
    output.locator(".oblix-message").nth(39).wait_for()
    selector = ".jp-Notebook .jp-Cell:nth-child(2) .oblix-chat"
    layout = measure(jlab, selector)
    jlab.page.locator(selector).scroll_into_view_if_needed()
    jlab.screenshot("cell-output-chat")
    assert layout["messages"] == 40
    assert_one_scrolling_list(layout, "in a cell output")
    viewport = jlab.page.viewport_size["height"]
    assert viewport * 0.5 <= layout["list"]["height"] <= viewport * 0.6 + 1, "the list is bounded by the output's 60 % of the window"
    assert_at_the_newest(layout, "in a cell output")


# How a code block and a tool line look where ``root`` shows an answer, against the theme's own colours.
MEASURE_LOOK = """(root) => {
    const probe = document.createElement('div');
    probe.style.color = 'var(--jp-ui-font-color2)';
    probe.style.backgroundColor = 'var(--jp-layout-color2)';
    root.appendChild(probe);
    const theme = {color: getComputedStyle(probe).color, background: getComputedStyle(probe).backgroundColor};
    probe.remove();
    const pre = root.querySelector('.oblix-markdown pre');
    const after = pre.nextElementSibling.getBoundingClientRect().top - pre.getBoundingClientRect().bottom;
    const tool = root.querySelector('.oblix-tool'), summary = tool.querySelector('summary'), icon = tool.querySelector('.oblix-tool-icon');
    const iconBox = icon.getBoundingClientRect(), text = summary.querySelector('p').getClientRects()[0];
    return {
        theme, preBackground: getComputedStyle(pre).backgroundColor,
        codeBackground: getComputedStyle(pre.querySelector('code')).backgroundColor,
        prePadding: parseFloat(getComputedStyle(pre).paddingLeft), after,
        toolColor: getComputedStyle(tool).color, summary: summary.innerText, codeInSummary: summary.querySelectorAll('code').length,
        icon: {width: iconBox.width, height: iconBox.height, border: getComputedStyle(icon).borderTopColor, middle: (iconBox.top + iconBox.bottom) / 2},
        firstLine: {top: text.top, bottom: text.bottom},
    };
}"""
LOOK_ANSWER = "The code:\n\n```python\nmonthly.unstack().plot()\n```\n\nThe next paragraph, clear of the block."


def assert_looks_like_jupyterlab(look: dict[str, Any], where: str) -> None:
    context = f"{where}: {look}"
    assert look["preBackground"] == look["theme"]["background"] != "rgba(0, 0, 0, 0)", f"code block on the theme's background; {context}"
    assert look["codeBackground"] == "rgba(0, 0, 0, 0)", f"no second background inside the block; {context}"
    assert look["prePadding"] >= 4 and look["after"] >= 8, f"padded, and the next paragraph clear of it; {context}"
    assert look["toolColor"] == look["theme"]["color"], f"the tool line in the theme's secondary colour; {context}"
    assert "`" not in look["summary"] and look["codeInSummary"] == 2, f"backticks became code; {context}"
    icon, line = look["icon"], look["firstLine"]
    assert icon["width"] >= 6 and icon["height"] >= 6 and icon["border"] == look["toolColor"], f"the icon is drawn; {context}"
    assert line["top"] <= icon["middle"] <= line["bottom"], f"the icon sits on the summary's line; {context}"


def test_code_blocks_and_tool_lines_use_the_themes_colours_in_cells_and_in_the_panel(jlab, server):
    notebook = "layout/look.ipynb"
    store = jlab.lab.store()
    session_id = store.create_session(title="look")
    store.save_message(session_id, "What is in sales?", role="user")
    store.save_message(session_id, LOOK_ANSWER, role="assistant", model="openai/test-model", tools=TOOLS)
    store.bind(notebook, session_id)
    jlab.lab.write_notebook(notebook, [LOAD, "%oblix show --last 1"])
    jlab.open_notebook(notebook)
    surfaces = {"a cell's %oblix show": ".jp-Notebook .jp-Cell:nth-child(2) .jp-OutputArea-output", "the panel": PANEL}
    try:
        for theme in ("JupyterLab Light", "JupyterLab Dark"):
            set_theme(jlab, theme)
            jlab.run_cell(0)
            jlab.run_cell(1)
            jlab.chat_from_toolbar().locator(".oblix-tool").first.wait_for()
            set_sidebar_width(jlab, 400)
            for where, selector in surfaces.items():
                jlab.page.locator(selector).locator(".oblix-tool").first.wait_for()
                look = jlab.evaluate(f"async (selector) => ({MEASURE_LOOK})(document.querySelector(selector))", selector)
                assert_looks_like_jupyterlab(look, f"{where}, {theme}")
            name = f"look-{theme.split()[-1].lower()}"
            folder = jlab.screenshot(name).parent
            jlab.page.locator(PANEL).locator(".oblix-assistant").last.screenshot(path=str(folder / f"{name}-panel-answer.png"))
    finally:
        set_theme(jlab, "JupyterLab Light")
