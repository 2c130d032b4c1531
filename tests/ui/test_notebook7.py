"""The same lab extension in Jupyter Notebook 7: the chat docks in its right panel, scrolls as one list, and
answers' code blocks get Copy and Insert below."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import TOKEN, WAIT_MS, LabPage, browser_tab
from model_server import Behavior

pytestmark = pytest.mark.timeout(240)
LOAD = "%load_ext oblix_jupyter"
CODE = "import pandas as pd\ndf = pd.DataFrame({'a': [1, None]})\ndf.isna().sum()"
ANSWER = "Count them per column:\n\n```python\n" + CODE + "\n```\n\n" + "It returns a Series. " * 30


@pytest.fixture
def nb7(browser, notebook7, request) -> Iterator[LabPage]:
    """A browser tab on Notebook 7 (its notebook view at /notebooks/PATH), allowed to use the clipboard."""
    with browser_tab(browser, notebook7, request, "", {"width": 1300, "height": 850}) as tab:
        tab.page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=notebook7.url)
        yield tab


def open_in_notebook7(tab: LabPage, path: str) -> None:
    tab.path = path
    tab.page.goto(f"{tab.lab.url}/notebooks/{path}?token={TOKEN}")
    tab.page.wait_for_function("() => !!window.jupyterapp", timeout=WAIT_MS)
    tab.evaluate("async () => { await window.jupyterapp.started; await window.jupyterapp.restored; }")
    tab.page.wait_for_function("() => !!jupyterapp.shell.currentWidget?.sessionContext", timeout=WAIT_MS)
    tab.evaluate("async () => { const w = jupyterapp.shell.currentWidget; await w.context.ready; await w.sessionContext.ready; }")
    tab.wait_for_kernel()


def box(locator: Any) -> dict[str, float]:
    found = locator.bounding_box()
    assert found, "the element is rendered"
    return found


def test_notebook7_docks_the_chat_and_gives_code_blocks_their_buttons(nb7, server):
    server.default = Behavior(reply=ANSWER)
    nb7.lab.write_notebook("nb7/chat.ipynb", [LOAD, "%%oblix\nhow many missing values per column?"])
    open_in_notebook7(nb7, "nb7/chat.ipynb")
    nb7.run_cell(0)
    nb7.run_cell(1)
    output = nb7.output_locator(1)
    actions = output.locator(".jp-OblixCodeActions")
    actions.wait_for()
    actions.get_by_role("button", name="Copy").click()
    actions.get_by_role("button", name="Copied").wait_for()
    assert nb7.evaluate("async () => navigator.clipboard.readText()") == CODE
    actions.get_by_role("button", name="Insert below").click()
    sources = "() => jupyterapp.shell.currentWidget.content.widgets.map(cell => cell.model.sharedModel.getSource())"
    nb7.wait_until(lambda: len(nb7.evaluate(sources)) == 3, 30, "a cell to be inserted")
    assert nb7.evaluate(sources)[2] == CODE

    # Twenty more turns, each a long answer: the panel must scroll as one list in Notebook 7's side panel too.
    for turn in range(20):
        nb7.set_cell(1, f"%%oblix\nquestion {turn}")
        nb7.run_cell(1)
    nb7.page.locator(".jp-Notebook").first.click()
    nb7.page.keyboard.press("Control+Shift+O")
    chat = nb7.page.locator(".jp-OblixChat .oblix-chat")
    chat.wait_for()
    scroll = chat.locator(".oblix-scroll")
    scroll.locator(".oblix-message").nth(41).wait_for()
    assert scroll.locator(".oblix-message").count() == 42
    panel, listing = box(nb7.page.locator(".jp-OblixChat")), box(scroll)
    viewport = nb7.page.viewport_size
    assert panel["x"] + panel["width"] <= viewport["width"] + 1 and panel["y"] + panel["height"] <= viewport["height"] + 1
    assert panel["width"] >= 240, "the side panel is wide enough to read"
    heights = nb7.evaluate(
        "async () => { const s = document.querySelector('.jp-OblixChat .oblix-scroll');"
        " return [s.scrollHeight, s.clientHeight, [...s.querySelectorAll('.oblix-message')].map(m => m.scrollHeight - m.clientHeight)]; }"
    )
    assert heights[0] > heights[1] * 3, "the conversation is taller than the panel, so the list scrolls"
    assert max(heights[2]) <= 1, "no message is squeezed into a scroll box of its own"
    textarea = box(chat.locator(".oblix-input textarea"))
    assert textarea["height"] >= 30 and textarea["y"] + textarea["height"] <= panel["y"] + panel["height"] + 1
    assert listing["height"] >= 200
    nb7.screenshot("notebook7-chat")
