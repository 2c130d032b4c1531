"""The approval box: code a model proposed, shown inertly with its reason, that runs only when the user clicks Run.

The same widget serves a ``%%oblix`` cell and the chat panel. Everything the model wrote
reaches the page as an output of an ``Output`` widget (``display.html_outputs``), which
JupyterLab sanitises like any output; the code is highlighted through the inert Markdown
renderer. Run, Skip and Edit's Run hand the user's reply to ``PendingRun.answer`` from the
button's handler, which ipykernel calls on the kernel's main thread between cells: the
code runs there as a cell of the user's, its outputs captured under the box. The turn's
thread waits in ``wait`` for that, or for the answer to end (then the box shows it expired).
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from concurrent.futures import Future
from concurrent.futures import TimeoutError as WaitedEnough
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from ..errors import OblixError
from ..kernel.main_thread import main_thread_caller
from ..render import markdown_html
from .display import OUTPUT_CSS, html_outputs

if TYPE_CHECKING:
    from ..kernel.code_tool import PendingRun, Reply
    from ..kernel.runs import RunOutcome

EXPIRED = "Expired: this answer is over, so this code can no longer run."
STOPPED = "Stopped: the answer was stopped before this code was approved; it will not run."
_POLL_SECONDS = 0.25  # how often a waiting turn looks whether its answer was ended meanwhile

APPROVAL_CSS = """
.oblix-approval { border: var(--jp-border-width, 1px) solid var(--jp-warn-color1, #f57c00); border-left-width: 4px;
  border-radius: 3px; padding: 4px 8px; margin: 6px 0; gap: 4px; overflow: visible; min-width: 0; }
.oblix-approval .jp-OutputPrompt { display: none; }
.oblix-approval .oblix-approval-actions { flex-flow: row wrap; gap: 4px; overflow: visible; }
.oblix-approval .oblix-approval-actions > .jupyter-widgets { margin: 0; }
.oblix-approval .oblix-approval-edit textarea { font-family: var(--jp-code-font-family, monospace); min-height: 6em; }
.oblix-approval .oblix-approval-status { color: var(--jp-ui-font-color2, #616161); }
.oblix-approval.oblix-expired { border-color: var(--jp-border-color1, #bdbdbd); opacity: 0.75; }
.jp-RenderedHTMLCommon .oblix-approval .oblix-markdown pre, .oblix-approval .oblix-markdown pre { max-height: 24em; overflow: auto;
  white-space: pre-wrap; overflow-wrap: anywhere; }  /* every character of the code in view: nothing past the right edge */
"""


def code_html(code: str) -> str:
    """``code`` as a highlighted Python block, through the inert renderer: a fence longer than any backtick run in it."""
    run = fence = 0
    for character in code:
        run = run + 1 if character == "`" else 0
        fence = max(fence, run)
    marks = "`" * max(3, fence + 1)
    return markdown_html(f"{marks}python\n{code}\n{marks}")


class ApprovalBox(widgets.VBox):
    """One run request, waiting for Run, Skip or an edit; ``insert_cell`` (None without the lab extension) offers Insert as cell."""

    def __init__(
        self, pending: PendingRun, insert_cell: Callable[[str], bool] | None = None, on_running: Callable[[bool], None] | None = None
    ) -> None:
        """``on_running`` hears when the approved code starts and stops running (the panel's Stop interrupts it meanwhile)."""
        self.pending = pending
        self.insert_cell = insert_cell
        self.on_running = on_running
        # A click may be handled on a thread ipykernel gives comm messages (a subshell's): the code still runs on the main thread.
        self._on_main = main_thread_caller() or (lambda work: work())
        self._decided: Future[RunOutcome] = Future()
        request = pending.request
        self.proposal = widgets.Output()
        self.proposal.outputs = html_outputs(
            "<p><b>The model asks to run this code in your kernel.</b> "
            f"<span class='oblix-approval-reason'>{html.escape(request.reason) or '(no reason given)'}</span></p>" + code_html(request.code),
            f"The model asks to run this code ({request.reason}):\n{request.code}",
        )
        self.editor = widgets.Textarea(value=request.code, layout=widgets.Layout(width="100%", display="none"))
        self.editor.add_class("oblix-approval-edit")
        self.run_button = self._button("Run", "play", "Run this code in the kernel, as a cell", "success", lambda: self._reply(True))
        self.skip_button = self._button("Skip", "times", "Do not run it; the model is told you declined", "", lambda: self._reply(False))
        self.edit_button = self._button("Edit", "pencil", "Change the code before it runs", "", self._edit)
        self.run_edit_button = self._button("Run edited", "play", "Run the code as you edited it", "success", lambda: self._reply(self.editor.value))
        self.run_edit_button.layout.display = "none"
        self.insert_button = self._button("Insert as cell", "plus", "Insert the code as a new cell below the active cell", "", self._insert)
        if insert_cell is None:
            self.insert_button.layout.display = "none"
        # Stop is the lab extension's: while the code runs the kernel takes no click, so the page interrupts the kernel itself.
        self.stop_button = self._button("Stop", "stop", "Interrupt the running code", "danger", lambda: None, name="run-stop")
        self.stop_button.add_class("oblix-interrupt")
        self.stop_button.layout.display = "none"
        self.status = widgets.Label("", layout=widgets.Layout(display="none"))
        self.status.add_class("oblix-approval-status")
        # Takes room only once it says something: an empty line under the buttons read as a gap in a narrow sidebar.
        self.status.observe(lambda change: setattr(self.status.layout, "display", "" if change["new"] else "none"), "value")
        self.output = widgets.Output()  # the run's own outputs, as a cell shows them
        self.output.add_class("oblix-approval-output")
        actions = widgets.HBox([self.run_button, self.skip_button, self.edit_button, self.run_edit_button, self.stop_button, self.insert_button])
        actions.add_class("oblix-approval-actions")
        super().__init__([widgets.HTML(f"<style>{OUTPUT_CSS}{APPROVAL_CSS}</style>"), self.proposal, self.editor, actions, self.status, self.output])
        self.add_class("oblix-approval")

    @staticmethod
    def _button(label: str, icon: str, tooltip: str, style: str, action: Callable[[], Any], name: str = "") -> widgets.Button:
        button = widgets.Button(description=label, icon=icon, tooltip=tooltip, button_style=style)
        button.layout.width = "auto"
        button.add_class("oblix-" + (name or label.lower().replace(" ", "-")))
        button.on_click(lambda _button: action())
        return button

    def _edit(self) -> None:
        self.editor.layout.display = ""
        self.run_edit_button.layout.display = ""
        self.edit_button.layout.display = "none"
        self.run_button.layout.display = "none"

    def _insert(self) -> None:
        code = self.editor.value if self.editor.layout.display != "none" else self.pending.request.code
        if self.insert_cell is None or not self.insert_cell(code):
            self.status.value = "Inserting cells needs the oblix JupyterLab extension."

    def _reply(self, reply: Reply) -> None:
        """A button's reply, on the kernel's main thread: decide, run what was approved with its outputs below, hand the outcome over."""
        from ..kernel.runs import InvalidApproval

        if self._decided.done():
            return
        self._set_deciding(False)
        self.status.value = "Running…" if reply is not False else "Skipped."
        try:
            with self._running(reply is not False):
                outcome = self._on_main(lambda: self._answer(reply))
        except InvalidApproval as refused:  # an empty edit: the request still waits
            self._set_deciding(True)
            self.status.value = str(refused)
            return
        except OblixError as error:  # expired: the request can never run
            self.expire(str(error))
            return
        except BaseException as error:  # the turn's thread reports it; the kernel goes on
            self._settle(error=error)
            self.status.value = f"Failed: {type(error).__name__}"
            return
        self.status.value = _said(outcome)
        self.add_class("oblix-decided")  # a restart leaves it as it is: it was decided
        self._settle(outcome)

    def _settle(self, outcome: RunOutcome | None = None, error: BaseException | None = None) -> None:
        """Hand the turn's thread what came of the request, once."""
        if not self._decided.done():
            if error is not None:
                self._decided.set_exception(error)
            else:
                self._decided.set_result(outcome)  # type: ignore[arg-type]

    def _answer(self, reply: Reply) -> RunOutcome:
        """The reply acted on, on the kernel's main thread, what the code shows captured under the box."""
        with self.output:
            return self.pending.answer(reply)

    @contextmanager
    def _running(self, running: bool) -> Iterator[None]:
        """Stop shown (and the panel told) while approved code runs."""
        if running:
            self.stop_button.layout.display = ""
            if self.on_running is not None:
                self.on_running(True)
        try:
            yield
        finally:
            if running:
                self.stop_button.layout.display = "none"
                if self.on_running is not None:
                    self.on_running(False)

    def kept(self) -> tuple[str, str]:
        """The box as it ended, as HTML and text: what a saved notebook keeps once its widgets are gone (the run's printed text included)."""
        proposal = self.proposal.outputs[0]["data"]
        printed = "".join(str(output.get("text", "")) for output in self.output.outputs if output.get("output_type") == "stream")
        html_printed = f"<pre>{html.escape(printed)}</pre>" if printed else ""
        status = html.escape(self.status.value)
        return (
            f"<div class='oblix-approval-kept'>{proposal['text/html']}<p><em>{status}</em></p>{html_printed}</div>",
            "\n".join(filter(None, [proposal["text/plain"], self.status.value, printed])),
        )

    def _set_deciding(self, enabled: bool) -> None:
        for button in (self.run_button, self.skip_button, self.edit_button, self.run_edit_button):
            button.disabled = not enabled
        self.editor.disabled = not enabled

    def wait(self, stopped: Callable[[], bool] = lambda: False) -> RunOutcome:
        """The outcome once the user has answered (on the turn's thread); ``ApprovalExpired`` if the answer ends or is ``stopped`` first."""
        from ..kernel.runs import ApprovalExpired

        while True:
            try:
                return self._decided.result(timeout=_POLL_SECONDS)
            except WaitedEnough:
                # Given up only if the user has not decided meanwhile: else the run is under way, and its outcome follows.
                if (self.pending.over.is_set() or stopped()) and self.pending.withdraw():
                    why = EXPIRED if self.pending.over.is_set() else STOPPED
                    self.expire(why)
                    raise ApprovalExpired(why) from None

    def expire(self, why: str = EXPIRED) -> None:
        """Show that this request can never run; a turn still waiting for it hears so."""
        from ..kernel.runs import ApprovalExpired

        self._set_deciding(False)
        self.add_class("oblix-expired")
        self.status.value = why
        self._settle(error=ApprovalExpired(why))


def _said(outcome: RunOutcome) -> str:
    """The status line after a reply: what ran, how long it took, how it ended."""
    if not outcome.ran:
        return "Skipped: the model is told you declined."
    what = "Ran your edit" if outcome.decision.action == "edited" else "Ran"
    cell = f" as In[{outcome.cell}]" if outcome.cell is not None else ""
    ended = " (stopped at the time limit)" if outcome.timed_out else " (interrupted)" if outcome.stopped_by_user else ""
    return f"{what}{cell} in {outcome.seconds:.1f} s{ended}."
