"""The model asks to run code and the user decides, in real JupyterLab with headless Chromium: the box in a cell and in the chat panel.

What the user sees is read from the page; what ran, from the kernel (a probe variable);
what the model was told, from the requests the loopback server received. The reason and
the code carry markup that would run script if it were rendered as HTML; it must stay
text. The seconds from a click on Run to the answer's continuation are printed for the
closing note. Screenshots go to ``test-artifacts/ui/``.
"""

from __future__ import annotations

import json
import time

import nbformat
import pytest
from model_server import Behavior, ToolCall
from test_panel_layout import LOAD, set_sidebar_width

pytestmark = pytest.mark.timeout(300)
TOOLS = "import os\nos.environ['OBLIX_TOOL_MODELS'] = 'openai/test-model'  # as a user declares a self-hosted endpoint that calls tools"
PROBE = "probe = 6 * 7\nprint('the probe is', probe)\n# <script>window.oblixRan = 'code'</script>"
REASON = "to check the total <img src=x onerror=\"window.oblixRan = 'reason'\">"
ASK = "print('probe' in globals())"
LONG = "import time\nfor step in range(600):\n    time.sleep(0.1)"


def tool_results(request: dict) -> list[str]:
    return [m["content"] for m in request["messages"] if m["role"] == "tool"]


def box_of(where) -> object:
    return where.locator(".oblix-approval").last


def test_in_a_cell_the_box_waits_run_continues_the_answer_in_place_and_insert_adds_the_code(jlab, server):
    server.enqueue(
        Behavior(reply="Let me compute it.", tool_calls=[ToolCall("run_code", {"code": PROBE, "reason": REASON})]),
        Behavior(reply="The probe is 42, as computed.", token_delay=0.02),
    )
    later = ["%%oblix\nReset the probe", "%%oblix\nNever mind", "%%oblix\nSet it to minus one"]
    jlab.lab.write_notebook("runs/cell.ipynb", [TOOLS, LOAD, "%%oblix\nCompute the probe", ASK, *later])
    jlab.open_notebook("runs/cell.ipynb")
    for cell in range(3):
        jlab.run_cell(cell)  # the %%oblix cell ends once the box is shown: Run All would go on
    output = jlab.output_locator(2).first  # the box's own output areas are inside it
    box = box_of(output)
    box.wait_for()
    assert "Let me compute it." in output.inner_text()
    assert "to check the total" in box.inner_text() and "print('the probe is', probe)" in box.inner_text()
    assert "<script>" in box.inner_text(), "the code is shown as the text it is"
    jlab.run_cell(3)
    assert jlab.output_locator(3).first.inner_text().strip() == "False", "nothing ran before the click"

    area, shown = output.bounding_box(), box.bounding_box()
    assert shown["width"] > 200 and shown["x"] + shown["width"] <= area["x"] + area["width"] + 1, (shown, area)
    jlab.screenshot("run-code-cell-waiting")

    clicked = time.monotonic()
    box.locator("button.oblix-run").click()
    output.get_by_text("The probe is 42, as computed.").first.wait_for()
    print(f"\nseconds from Run to the answer's continuation in the cell: {time.monotonic() - clicked:.2f}")
    assert "the probe is 42" in box.locator(".oblix-approval-output").inner_text(), "the run's output is shown under the box"
    box.locator(".oblix-approval-status", has_text="Ran as In[").wait_for()
    assert box.locator("button.oblix-run").is_disabled(), "a decided request cannot be run again"
    (result,) = tool_results(server.chat_requests()[-1])
    assert "the probe is 42" in result
    jlab.run_cell(3)
    jlab.wait_until(lambda: jlab.output_locator(3).first.inner_text().strip() == "True", 10, "the probe to be defined")
    jlab.screenshot("run-code-cell-continued")

    # Widgets are not saved with a notebook: the page keeps a static copy of what they show, hidden while they live.
    jlab.wait_until(lambda: output.locator(".oblix-kept").count() == 1, 10, "the static copy to be kept")
    assert not output.locator(".oblix-kept").is_visible(), "hidden while the live box shows the same"
    jlab.evaluate("async () => { await jupyterapp.commands.execute('docmanager:save'); }")
    saved = nbformat.read(str(jlab.lab.work / "runs/cell.ipynb"), as_version=4).cells[2].outputs
    kept = [item["data"] for item in saved if item.get("metadata", {}).get("oblix")]
    assert len(kept) == 1 and "The probe is 42, as computed." in kept[0]["text/plain"], saved
    assert "the probe is 42" in kept[0]["text/plain"] and "Ran as In[" in kept[0]["text/plain"] and "6 * 7" in kept[0]["text/html"]
    assert "Let me compute it." in json.dumps(saved), "the text before the box is the cell's own display"

    box.locator("button.oblix-insert-as-cell").click()
    sources = lambda: jlab.evaluate("async () => [...jupyterapp.shell.currentWidget.content.model.cells].map(c => c.sharedModel.getSource())")  # noqa: E731
    jlab.wait_until(lambda: PROBE in sources(), 10, "the code to be inserted as a cell")
    cells = sources()
    assert cells.count(PROBE) == 1 and cells.index(PROBE) == 3, "exactly the approved code, below the cell whose box was clicked"
    assert jlab.page.evaluate("() => window.oblixRan") is None, "neither the reason nor the code ran as script"

    # The session moves on: the box still waiting expires, and its answer is stored before the next prompt.
    server.enqueue(
        Behavior(tool_calls=[ToolCall("run_code", {"code": "probe = 0", "reason": "reset it"})]),
        Behavior(reply="Fine, nothing ran."),
        Behavior(tool_calls=[ToolCall("run_code", {"code": "probe = -1", "reason": "lower it"})]),
    )
    jlab.run_cell(5)
    waiting = box_of(jlab.output_locator(5).first)
    waiting.wait_for()
    jlab.run_cell(6)
    jlab.output_locator(6).first.get_by_text("Fine, nothing ran.").wait_for()
    waiting.locator(".oblix-approval-status", has_text="this answer is over").wait_for()
    assert waiting.locator("button.oblix-run").is_disabled()
    store = jlab.lab.store()
    contents = [(m["role"], m["content"], m.get("status")) for m in store.get_session(store.bound_session("runs/cell.ipynb"))["messages"]]
    reset = contents.index(("user", "Reset the probe", None))
    assert contents[reset + 1][0] == "assistant" and contents[reset + 1][2] == "interrupted", contents
    assert contents[reset + 2] == ("user", "Never mind", None), "the ended answer is stored before the next prompt"

    # A kernel restart: the box still waiting shows it can no longer run.
    jlab.run_cell(7)
    pending = box_of(jlab.output_locator(7).first)
    pending.wait_for()
    jlab.evaluate("async () => { await jupyterapp.shell.currentWidget.sessionContext.session.kernel.restart(); }")
    pending.locator(".oblix-approval-status", has_text="the kernel restarted").wait_for()
    assert pending.locator("button.oblix-run").is_disabled() and "oblix-expired" in pending.get_attribute("class")
    assert "Ran as In[" in box.locator(".oblix-approval-status").inner_text(), "a restart leaves a decided box saying what came of it"

    # Without the widgets (a reader of the saved file), the static copy shows instead.
    jlab.evaluate("async () => { for (const view of document.querySelectorAll('.oblix-handoff')) view.remove(); }")
    copy = output.locator(".oblix-kept")
    copy.wait_for()
    shown, area = copy.bounding_box(), output.bounding_box()
    assert shown["height"] > 100 and shown["x"] + shown["width"] <= area["x"] + area["width"] + 1, (shown, area)
    assert "The probe is 42, as computed." in copy.inner_text() and "the probe is 42" in copy.inner_text()
    copy.scroll_into_view_if_needed()
    jlab.screenshot("run-code-cell-saved-copy")


def test_in_the_panel_stop_interrupts_a_long_run_and_skip_tells_the_model_it_was_declined(jlab, server):
    server.enqueue(
        Behavior(tool_calls=[ToolCall("run_code", {"code": LONG, "reason": "a long loop"})]),
        Behavior(reply="It was stopped, fine."),
        Behavior(tool_calls=[ToolCall("run_code", {"code": LONG, "reason": "the long loop again"})]),
        Behavior(reply="Stopped again, fine."),
        Behavior(tool_calls=[ToolCall("run_code", {"code": "skipped_probe = 1", "reason": REASON})]),
        Behavior(reply="You declined, fine."),
    )
    jlab.lab.write_notebook("runs/panel.ipynb", [TOOLS, LOAD, ASK.replace("probe", "skipped_probe")])
    jlab.open_notebook("runs/panel.ipynb")
    jlab.run_cell(0)
    jlab.run_cell(1)
    chat = jlab.chat_from_toolbar()
    chat.wait_for()
    set_sidebar_width(jlab, 400)

    chat.locator(".oblix-input textarea").fill("Loop for a minute")
    chat.locator(".oblix-input textarea").press("Enter")
    box = box_of(chat)
    box.wait_for()
    within = chat.bounding_box()
    shown = box.bounding_box()
    assert shown["x"] >= within["x"] - 1 and shown["x"] + shown["width"] <= within["x"] + within["width"] + 1, (shown, within)
    jlab.screenshot("run-code-panel-waiting")
    started = time.monotonic()
    box.locator("button.oblix-run").click()
    box.locator("button.oblix-run-stop").click()  # shown while the code runs: it stops the code, and the answer goes on
    chat.get_by_text("It was stopped, fine.").wait_for()
    assert time.monotonic() - started < 30, "Stop interrupted the 60 s loop"
    (result,) = tool_results(server.chat_requests()[-1])
    assert "the user interrupted it" in result and "interrupted by the user" in result

    # The panel's own Stop, while approved code runs, interrupts the code just as well.
    chat.locator("button.oblix-send:not([disabled])").wait_for()
    chat.locator(".oblix-input textarea").fill("Loop again")
    chat.locator(".oblix-input textarea").press("Enter")
    box = chat.locator(".oblix-approval", has_text="the long loop again")
    box.locator("button.oblix-run:not([disabled])").wait_for()
    started = time.monotonic()
    box.locator("button.oblix-run").click()
    box.locator("button.oblix-run-stop").wait_for()
    chat.locator("button.oblix-stop.oblix-interrupt").click()  # the page interrupts the kernel: it takes no click while busy
    chat.get_by_text("Stopped again, fine.").wait_for()
    assert time.monotonic() - started < 30
    box.locator(".oblix-approval-status", has_text="(interrupted)").wait_for()
    assert "the user interrupted it" in tool_results(server.chat_requests()[-1])[0]

    chat.locator("button.oblix-send:not([disabled])").wait_for()
    chat.locator(".oblix-input textarea").fill("Set the skipped probe")
    chat.locator(".oblix-input textarea").press("Enter")
    box = chat.locator(".oblix-approval", has_text="skipped_probe = 1")
    box.wait_for()
    box.locator("button.oblix-skip").click()
    chat.get_by_text("You declined, fine.").wait_for()
    assert tool_results(server.chat_requests()[-1]) == ["The user declined to run this code. It did not run."]
    jlab.run_cell(2)
    assert jlab.output_locator(2).first.inner_text().strip() == "False"
    assert chat.locator(".oblix-approval").count() == 3, "the boxes stay under their answers"
    assert jlab.page.evaluate("() => window.oblixRan") is None
    jlab.screenshot("run-code-panel-decided")
