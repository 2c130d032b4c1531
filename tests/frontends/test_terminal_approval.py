"""Terminal IPython asks before code a model proposed runs: a real IPython on a pseudo-terminal, a scripted model over HTTP.

The person is played through the pty: "n" declines, "y" runs, "e" edits the code in
place. A hostile reason tries terminal controls (the clipboard, colours); nothing of it
may reach the terminal as a control.
"""

from __future__ import annotations

import json
import re
import sys

import pexpect
import pytest
from model_server import Behavior, ToolCall

pytestmark = pytest.mark.timeout(180)
CONTROLS = re.compile(r"[\x00-\x08\x0b-\x0c\x0e-\x1f\x7f-\x9f]")  # the pty writes each newline as CR LF
HOSTILE = "to check\x1b]52;c;b3duZWQ=\x07 the data\x9b2J"
SCRIPT = "; ".join(
    [
        "ip = get_ipython()",
        "ip.run_line_magic('load_ext', 'oblix_jupyter')",
        "[ip.run_cell_magic('oblix', '', question) for question in ('one', 'two', 'three')]",
        "import json",
        "print('STATE', json.dumps({'declined': 'declined_probe' in globals(), 'probe': globals().get('probe')}))",
    ]
)


def test_terminal_ipython_asks_y_n_e_and_runs_only_what_was_approved(model_env, monkeypatch, tmp_path):
    monkeypatch.setenv("OBLIX_TOOL_MODELS", "openai/test-model")
    model_env.enqueue(
        Behavior(tool_calls=[ToolCall("run_code", {"code": "declined_probe = 1", "reason": HOSTILE})]),
        Behavior(reply="Declined, fine."),
        Behavior(tool_calls=[ToolCall("run_code", {"code": "probe = 1", "reason": "set it"})]),
        Behavior(reply="Set."),
        Behavior(tool_calls=[ToolCall("run_code", {"code": "probe = 10", "reason": "set it higher"})]),
        Behavior(reply="Edited, fine."),
    )
    shell = pexpect.spawn(
        sys.executable, ["-m", "IPython", "--no-banner", "--colors=NoColor", "-c", SCRIPT], cwd=str(tmp_path), encoding="utf-8", timeout=60
    )
    shell.expect_exact("Run it? [y/N/e(dit)] ")
    shown = shell.before[shell.before.index("[The model asks") :]  # before it, IPython's own title and cursor sequences
    shell.sendline("n")
    shell.expect_exact("Run it? [y/N/e(dit)] ")
    shell.sendline("y")
    shell.expect_exact("Run it? [y/N/e(dit)] ")
    shell.sendline("e")
    shell.expect_exact("Esc then Enter runs it")
    shell.send("\nprobe = probe + 1")
    shell.send("\x1b\r")  # Esc, Enter: prompt_toolkit's multi-line accept
    shell.expect(r"STATE (\{.*\})")
    state = json.loads(shell.match.group(1))
    assert state == {"declined": False, "probe": 11}, "declined code never ran; approved and edited code ran as given"
    assert "declined_probe = 1" in shown and "to check]52;c;b3duZWQ= the data2J" in shown
    assert not CONTROLS.search(shown), repr(shown)

    results = [m["content"] for request in model_env.chat_requests()[-5:] for m in request["messages"] if m["role"] == "tool"]
    assert results[0] == "The user declined to run this code. It did not run."
    assert any("the user's edit of your code" in result and "probe = probe + 1" in result for result in results)


def test_terminal_ipython_shows_a_failed_runs_traceback_and_the_model_reads_it_once(model_env, monkeypatch, tmp_path):
    """Terminal IPython prints a traceback to stdout, which the run tees: the model reads the error once, as the error."""
    monkeypatch.setenv("OBLIX_TOOL_MODELS", "openai/test-model")
    code = "print('looking up the price'); {'price': 1}['prce']"
    model_env.enqueue(Behavior(tool_calls=[ToolCall("run_code", {"code": code, "reason": "read it"})]), Behavior(reply="A typo."))
    script = "; ".join(
        ["ip = get_ipython()", "ip.run_line_magic('load_ext', 'oblix_jupyter')", "ip.run_cell_magic('oblix', '', 'the price?')", "print('DONE')"]
    )
    shell = pexpect.spawn(
        sys.executable, ["-m", "IPython", "--no-banner", "--colors=NoColor", "-c", script], cwd=str(tmp_path), encoding="utf-8", timeout=60
    )
    shell.expect_exact("Run it? [y/N/e(dit)] ")
    shell.sendline("y")
    shell.expect_exact("DONE")
    assert "KeyError: 'prce'" in shell.before, "the user saw the traceback"
    result = next(m["content"] for m in model_env.chat_requests()[-1]["messages"] if m["role"] == "tool")
    assert result.count("KeyError") == 1, result
    assert "Error (traceback trimmed to the cell's frames):" in result and "looking up the price" in result
