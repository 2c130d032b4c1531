"""A ``%%oblix`` cell shows at once, in JupyterLab, which model it waits for; the answer then takes its place."""

from __future__ import annotations

import pytest
from model_server import Behavior

pytestmark = pytest.mark.timeout(180)
HOLD = 2.0  # seconds the model holds its first token back


def test_the_waiting_line_is_visible_at_once_and_the_answer_replaces_it(jlab, server):
    server.default = Behavior(first_token_delay=HOLD)
    jlab.lab.write_notebook("cells/waiting.ipynb", ["%load_ext oblix_jupyter", "%%oblix\nwhat is in this table?"])
    jlab.open_notebook("cells/waiting.ipynb")
    jlab.run_cell(0)
    # Run the cell and time, in the page, until the waiting line is in the output and has a size.
    shown_ms = jlab.evaluate(
        """async () => {
            const cell = document.querySelectorAll('.jp-Notebook .jp-Cell')[1];
            const visible = () => { const line = cell.querySelector('.oblix-waiting'); return line && line.getBoundingClientRect().height > 0; };
            const start = performance.now();
            const seen = new Promise(resolve => {
                const watch = new MutationObserver(() => { if (visible()) { watch.disconnect(); resolve(performance.now() - start); } });
                watch.observe(cell, { subtree: true, childList: true, characterData: true });
            });
            const notebook = jupyterapp.shell.currentWidget.content;
            notebook.activeCellIndex = 1;
            jupyterapp.commands.execute('notebook:run-cell');
            return await seen;
        }"""
    )
    output = jlab.output_locator(1)
    line = output.locator(".oblix-waiting")
    assert shown_ms <= 200, f"the waiting line showed {shown_ms:.0f} ms after the cell was run"
    line.filter(has_text="Waiting for openai/test-model…").wait_for(timeout=jlab.timeout_ms)  # named once the session is read
    box = line.bounding_box()
    jlab.screenshot("waiting-line")
    assert box is not None and box["height"] >= 10 and box["width"] > 100, box

    output.locator(".oblix-markdown", has_text="Echo: what is in this table?").wait_for(timeout=jlab.timeout_ms)
    jlab.wait_for_kernel()
    jlab.screenshot("waiting-line-replaced")
    assert output.locator(".oblix-waiting").count() == 0
    assert output.locator(".jp-OutputArea-output").count() == 1, "the answer took the waiting line's place"
