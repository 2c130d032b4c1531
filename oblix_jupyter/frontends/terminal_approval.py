"""Terminal IPython's approval of code a model proposed: the code and its reason printed inertly, then Run it? [y/N/e].

Called on the main thread while the ``%%oblix`` cell's turn waits (terminal IPython runs
the turn there), so the approved code runs at once, as the cell's own. Anything but a
clear yes declines; ``e`` opens the code in an editable prompt, and what the user leaves
there is what runs. Everything printed goes through ``terminal_text``: the model's text
cannot move the cursor, recolour the terminal or write the clipboard.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..render import terminal_text

if TYPE_CHECKING:
    from ..kernel.code_tool import PendingRun, Reply
    from ..kernel.runs import RunOutcome

QUESTION = "Run it? [y/N/e(dit)] "
EDIT_HINT = "[Edit the code; Esc then Enter runs it, Ctrl-C goes back to the question]"


def ask_in_terminal(pending: PendingRun) -> RunOutcome:
    """Show the request, ask until the answer is yes, no or an edit, and act on it."""
    request = pending.request
    lines = "\n".join(f"  {line}" for line in request.code.splitlines() or [""])
    print(terminal_text(f"\n[The model asks to run this code in your session: {request.reason or '(no reason given)'}]\n{lines}"), flush=True)
    while True:
        try:
            said = input(QUESTION)
        except EOFError:  # Ctrl-D: no
            said = "n"
        reply = _reply(said.strip().lower(), request.code)
        if reply is not None:
            return pending.answer(reply)


def _reply(said: str, code: str) -> Reply | None:
    """The reply a typed answer makes: True, False, the edited code, or None to ask again (an edit given up)."""
    if said in ("y", "yes"):
        return True
    if said not in ("e", "edit"):
        return False
    from prompt_toolkit import prompt

    print(EDIT_HINT, flush=True)
    try:
        edited = prompt("", default=code, multiline=True)
    except (KeyboardInterrupt, EOFError):
        return None
    return edited if edited.strip() else None
