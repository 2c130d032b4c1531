"""Sessions and "what was sent" in the docked chat panel, in real JupyterLab and Chromium.

The picker tells sessions apart by their last activity; "New" asks for nothing and the
first prompt names the session; a notice lasts until the session moves on; each row of
Explain opens on the exact text sent, which stays text however hostile. Screenshots go
to ``test-artifacts/ui/``.
"""

from __future__ import annotations

import pytest
from model_server import Behavior
from test_panel_layout import LOAD, PANEL, set_sidebar_width, set_theme

pytestmark = pytest.mark.timeout(300)
HOSTILE = "<img src=http://127.0.0.1:1/x onerror=alert(1)>"
QUESTION = "How do I merge two frames on a customer key?"


# ipywidgets writes an option's spaces as no-break spaces.
SELECTED = "(selector) => document.querySelector(selector + ' select').selectedOptions[0].text.replace(/\\u00a0/g, ' ')"


def picker_labels(chat) -> list[str]:
    return chat.locator("select").first.evaluate("(select) => [...select.options].map((option) => option.text.replace(/\\u00a0/g, ' '))")


def test_the_picker_shows_last_activity_and_new_is_named_by_its_first_prompt(jlab, server):
    notebook = "sessions/picker.ipynb"
    store = jlab.lab.store()
    # The picker lists the 20 latest sessions: those earlier tests left would push the old one out of it.
    for earlier in store.list_sessions(limit=10_000):
        store.delete_session(earlier["id"])
    store.add_session(
        {
            "id": "5e551011-0000-4000-8000-000000000001",
            "title": "last spring",
            "created_at": "2025-03-02T10:00:00Z",
            "updated_at": "2025-03-02T10:30:00Z",
            "messages": [{"id": "msg_1", "role": "user", "content": "an old question", "timestamp": "2025-03-02T10:30:00Z"}],
        },
        new_id=False,
    )
    jlab.lab.write_notebook(notebook, [LOAD, "%%oblix\na question from a cell"])
    jlab.open_notebook(notebook)
    jlab.run_cell(0)
    jlab.run_cell(1)  # the notebook's own session, titled after the notebook
    chat = jlab.chat_from_toolbar()
    chat.wait_for()
    set_sidebar_width(jlab, 400)
    labels = picker_labels(chat)
    assert labels[0] == "picker · just now · 2 messages", labels
    assert "last spring · 2 Mar 2025 · 1 message" in labels, labels

    chat.get_by_role("button", name="New", exact=True).click()
    jlab.page.wait_for_function(f"(selector) => ({SELECTED})(selector).startsWith('Chat Session')", arg=PANEL)
    textarea = chat.locator(".oblix-input textarea")
    textarea.fill(f"{QUESTION}\nHere is what I tried.")
    textarea.press("Enter")
    chat.locator(".oblix-assistant", has_text="Echo: How do I merge").wait_for()
    jlab.page.wait_for_function(f"([selector, title]) => ({SELECTED})(selector) === title + ' · just now · 2 messages'", arg=[PANEL, QUESTION])
    jlab.screenshot("panel-sessions-picker-after-new")
    labels = picker_labels(chat)
    assert labels[0] == f"{QUESTION} · just now · 2 messages" and "picker · just now · 2 messages" in labels, labels


def test_stop_says_it_once_and_a_notice_goes_with_the_next_turn(jlab, server):
    notebook = "sessions/notices.ipynb"
    jlab.lab.write_notebook(notebook, [LOAD, "%%oblix\nand from a cell"])
    jlab.open_notebook(notebook)
    jlab.run_cell(0)
    chat = jlab.chat_from_toolbar()
    chat.wait_for()
    set_sidebar_width(jlab, 400)
    notice = chat.locator(".oblix-notice, .oblix-error")

    server.default = Behavior(reply="word " * 300, token_delay=0.03)
    textarea = chat.locator(".oblix-input textarea")
    textarea.fill("a long story please")
    textarea.press("Enter")
    chat.locator(".oblix-assistant", has_text="word word").wait_for()
    chat.get_by_role("button", name="Stop").click()
    chat.locator(".oblix-assistant", has_text="Interrupted: the part of the answer that arrived was kept.").wait_for()
    chat.locator("button.oblix-send:not([disabled])").wait_for()
    jlab.screenshot("panel-sessions-after-stop")
    assert notice.count() == 0, "the interrupted message says it; no notice repeats it"
    assert chat.get_by_text("the part of the answer that arrived was kept").count() == 1

    server.default = Behavior(reply="short")
    chat.get_by_text("Session settings").click()
    chat.get_by_placeholder("session title").fill("Renamed in the panel")
    chat.get_by_role("button", name="Rename").click()
    notice.filter(has_text="Renamed to 'Renamed in the panel'.").wait_for()
    jlab.run_cell(1)  # a turn made elsewhere: the panel follows the session, and the notice is about the past
    chat.locator(".oblix-assistant", has_text="short").wait_for()
    jlab.wait_until(lambda: notice.count() == 0, 15, "the notice to go with the next turn")
    jlab.screenshot("panel-sessions-notice-gone-after-a-cell-turn")


def test_explain_rows_open_on_the_exact_text_sent_and_it_stays_text(jlab, server):
    notebook = "sessions/explain.ipynb"
    jlab.lab.write_notebook(notebook, [LOAD, "%%oblix --explain\nWhat is in `sales`?"])
    jlab.open_notebook(notebook)
    jlab.run_cell(0)
    jlab.run_cell(1)
    in_cell = jlab.output_locator(1).locator(".oblix-plan-row")
    assert in_cell.count() == 1, "the cell's explanation: its prompt, the one message sent"
    in_cell.locator("summary").click()
    assert in_cell.locator("pre").inner_text() == "What is in `sales`?"
    fetched: list[str] = []
    jlab.page.on("request", lambda request: fetched.append(request.url))
    dialogs: list[str] = []
    jlab.page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    chat = jlab.chat_from_toolbar()
    chat.wait_for()
    set_sidebar_width(jlab, 400)
    prompt = f"What does this do? {HOSTILE}\n    indented line"
    textarea = chat.locator(".oblix-input textarea")
    textarea.fill(prompt)
    textarea.press("Enter")
    chat.locator(".oblix-assistant", has_text="Echo: What does this do?").wait_for()
    chat.locator("button.oblix-send:not([disabled])").wait_for()
    chat.locator(".oblix-explain-toggle").click()
    explain = chat.locator(".oblix-explain")
    row = explain.locator("details", has=jlab.page.locator("summary", has_text="the prompt"))
    text = row.locator("pre")
    assert not text.is_visible(), "rows start closed"
    row.locator("summary").click()
    text.wait_for(state="visible")
    assert text.inner_text() == prompt, "the exact text sent, spaces and markup as typed"
    shown, panel = text.bounding_box(), chat.bounding_box()
    assert panel["x"] <= shown["x"] and shown["x"] + shown["width"] <= panel["x"] + panel["width"] + 1, "the text opens within the panel"
    assert explain.locator("img, script, a, iframe, object").count() == 0
    tokens_in = explain.get_by_text("tokens in, as the model's server counted them (the footer's figure)")
    assert tokens_in.count() == 1
    assert explain.locator(".oblix-plan-row").count() == 3, "the cell's exchange, then the prompt"
    jlab.screenshot("panel-explain-row-open")
    try:
        set_theme(jlab, "JupyterLab Dark")
        jlab.page.locator(PANEL).locator(".oblix-explain").screenshot(path=str(jlab.screenshot("panel-explain-dark").parent / "panel-explain-dark-rows.png"))
    finally:
        set_theme(jlab, "JupyterLab Light")
    assert not [url for url in fetched if url.startswith("http://127.0.0.1:1/")], "nothing in the text was fetched"
    assert dialogs == [], "nothing in the text ran"
