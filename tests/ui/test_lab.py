"""The magics, the chat panel and the lab extension in a real JupyterLab, in headless Chromium."""

from __future__ import annotations

import pytest
from conftest import user_messages
from model_server import Behavior

pytestmark = pytest.mark.timeout(180)
LOAD = "%load_ext oblix_jupyter"
STREAMED = "The answer is **bold**, arrives word by word and ends here"


def test_oblix_cell_streams_and_ends_as_rendered_markdown(jlab, server):
    server.default = Behavior(reply=STREAMED, token_delay=0.1)
    jlab.lab.write_notebook("cells/streaming.ipynb", [LOAD, "%%oblix\nexplain streaming"])
    jlab.open_notebook("cells/streaming.ipynb")
    jlab.run_cell(0)
    jlab.record_changes(".jp-Notebook .jp-Cell:nth-child(2) .jp-Cell-outputWrapper", "answerTexts")
    jlab.run_cell(1)

    output = jlab.output_locator(1)
    output.locator(".oblix-markdown strong", has_text="bold").wait_for(timeout=jlab.timeout_ms)
    final = output.inner_text()
    assert "ends here" in final and "**" not in final and "openai/test-model" in final
    partial = [text for text in jlab.recorded("answerTexts") if "The answer" in text and "ends here" not in text]
    assert partial, "the output changed before the answer was complete"
    assert user_messages(server.chat_requests()[-1]) == ["explain streaming"]


def test_chat_panel_docks_streams_survives_a_reload_and_shares_the_session(jlab, server):
    server.default = Behavior(token_delay=0.08)  # echoes the prompt, word by word
    jlab.lab.write_notebook("chat/shared.ipynb", [LOAD, "%%oblix\nquestion from a cell"])
    jlab.open_notebook("chat/shared.ipynb")
    jlab.run_cell(0)
    jlab.run_cell(1)
    jlab.output_locator(1).locator(".oblix-markdown", has_text="Echo: question from a cell").wait_for()

    chat = jlab.open_chat_from_palette()
    conversation = chat.locator(".oblix-scroll")
    conversation.get_by_text("Echo: question from a cell").wait_for()
    assert conversation.locator(".oblix-user").count() == 1

    jlab.record_changes("#jp-right-stack .jp-OblixChat .oblix-scroll", "panelTexts")
    chat.locator(".oblix-input textarea").fill("hello from the panel with several words")
    chat.locator(".oblix-input textarea").press("Enter")  # the lab extension turns Enter into Send
    conversation.locator(".oblix-assistant", has_text="Echo: hello from the panel with several words").wait_for()
    streamed = [t for t in jlab.recorded("panelTexts") if "Echo: hello" in t and "several words" not in t.split("Echo: hello")[-1]]
    assert streamed, "the answer streamed into the panel"
    jlab.wait_until(lambda: chat.locator(".oblix-input textarea").input_value() == "", 10, "the input to be cleared")
    chat.locator("button.oblix-send:not([disabled])").wait_for()
    jlab.screenshot("docked-panel")

    store = jlab.lab.store()
    session_id = store.bound_session("chat/shared.ipynb")
    assert [m["content"] for m in store.get_session(session_id)["messages"]] == [
        "question from a cell",
        "Echo: question from a cell",
        "hello from the panel with several words",
        "Echo: hello from the panel with several words",
    ]
    assert user_messages(server.chat_requests()[-1]) == ["question from a cell", "hello from the panel with several words"]

    jlab.reload()
    chat = jlab.open_chat_from_palette()
    conversation = chat.locator(".oblix-scroll")
    conversation.get_by_text("Echo: hello from the panel with several words").wait_for()
    assert conversation.locator(".oblix-message").count() == 4



def test_renamed_notebook_continues_its_session_after_a_kernel_restart(jlab, server):
    jlab.lab.write_notebook("rename/before.ipynb", [LOAD, "%%oblix\nfirst, before the rename"])
    jlab.open_notebook("rename/before.ipynb")
    jlab.run_cell(0)
    jlab.run_cell(1)
    jlab.output_locator(1).get_by_text("Echo: first, before the rename").wait_for()
    store = jlab.lab.store()
    session_id = store.bound_session("rename/before.ipynb")
    assert session_id

    jlab.evaluate("async () => jupyterapp.serviceManager.contents.rename('rename/before.ipynb', 'rename/after.ipynb')")
    jlab.path = "rename/after.ipynb"
    jlab.wait_until(lambda: store.bound_session("rename/after.ipynb") == session_id, 30, "the kernel to follow the rename")
    jlab.wait_until(lambda: "rename/after.ipynb" in jlab.server_session_paths(), 30, "the server session to follow the rename")
    jlab.chat_from_toolbar().wait_for()
    jlab.evaluate("async () => jupyterapp.shell.currentWidget.sessionContext.restartKernel()")
    jlab.wait_for_kernel()
    # Its widget died with the kernel: the panel says so, and comes back once the cell loads Oblix again.
    jlab.page.locator(".jp-OblixChat").get_by_text("Oblix is not loaded in the kernel of rename/after.ipynb").wait_for()
    jlab.set_cell(1, "%%oblix\nsecond, after rename and restart")
    jlab.run_cell(0)
    jlab.page.locator(".jp-OblixChat .oblix-chat").get_by_text("Echo: first, before the rename").wait_for()
    jlab.run_cell(1)
    jlab.output_locator(1).get_by_text("Echo: second, after rename and restart").wait_for()

    assert user_messages(server.chat_requests()[-1]) == ["first, before the rename", "second, after rename and restart"]
    assert store.bound_session("rename/after.ipynb") == session_id
    assert len(store.get_session(session_id)["messages"]) == 4


def test_a_failing_model_shows_inline_and_keeps_the_typed_text(jlab, server):
    server.for_model("test-model", Behavior(status=500))
    jlab.lab.write_notebook("errors/failing.ipynb", [LOAD])
    jlab.open_notebook("errors/failing.ipynb")
    chat = jlab.chat_from_toolbar()
    jlab.page.get_by_text("Oblix is not loaded in the kernel of errors/failing.ipynb").wait_for()
    jlab.run_cell(0)
    jlab.chat_from_toolbar().wait_for()
    textarea = chat.locator(".oblix-input textarea")
    textarea.fill("please keep")
    textarea.press("Shift+Enter")  # a new line, not a send
    textarea.press_sequentially("this text")
    assert textarea.input_value() == "please keep\nthis text"
    chat.locator("button.oblix-send").click()

    error = chat.locator(".oblix-failed")
    error.wait_for()
    assert "500" in error.inner_text() and "Traceback" not in chat.inner_text()
    assert chat.get_by_text("HTTP 500").count() == 1, "the error is said once"
    chat.locator("button.oblix-send:not([disabled])").wait_for()
    assert textarea.input_value() == "please keep\nthis text"
    assert len(server.chat_requests()) == 1

    # Retry asks the failed prompt again, once, and the session keeps it once.
    server.for_model("test-model", Behavior(reply="answered on the retry"))
    retry = chat.locator("button.oblix-retry")
    retry.wait_for()
    assert retry.bounding_box()["height"] >= 20
    jlab.screenshot("panel-retry-after-a-failure")
    retry.click()
    chat.get_by_text("answered on the retry").wait_for()
    retry.wait_for(state="hidden")
    requests = server.chat_requests()
    assert len(requests) == 2 and [m["content"] for m in requests[-1]["messages"]].count("please keep\nthis text") == 1



def test_insert_code_from_the_chat_panel_adds_a_cell(jlab, server):
    server.default = Behavior(reply="Try this:\n\n```python\nprint('from the panel')\n```\n")
    jlab.lab.write_notebook("insert/code.ipynb", [LOAD])
    jlab.open_notebook("insert/code.ipynb")
    jlab.run_cell(0)
    chat = jlab.chat_from_toolbar()
    chat.wait_for()
    chat.locator(".oblix-input textarea").fill("write some code")
    chat.locator("button.oblix-send").click()
    chat.locator("button.oblix-insert").click()
    sources = "() => jupyterapp.shell.currentWidget.content.widgets.map(cell => cell.model.sharedModel.getSource())"
    jlab.wait_until(lambda: "print('from the panel')" in jlab.evaluate(sources), 30, "the code cell to be inserted")
