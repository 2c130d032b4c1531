"""A ``%%oblix`` turn that can outlive its cell: the cell ends when the model asks to run code, and the answer goes on below the approval box.

The turn runs on a thread of its own in the cell's context, while the cell waits. If it
ends without asking, the cell shows the end as it always did. If the model asks to run
code, the cell shows the approval box and ends there (so Run All never waits on a
person); the turn's thread waits for the box (``ApprovalBox.wait``), whose Run runs the
code between cells on the kernel's main thread, and then streams the rest of the answer
into a widget below the box, since a cell's display can no longer be updated once the
cell is over. Interrupting the cell (Stop) while it waits stops the answer.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import ipywidgets as widgets
from IPython.display import display

from .approval import ApprovalBox
from .display import OUTPUT_STYLE, Message, StreamingOutput, display_outputs

if TYPE_CHECKING:
    from ..kernel.code_tool import Ask, PendingRun
    from ..kernel.runs import RunOutcome

T = TypeVar("T")
Show = Callable[[Any], None]  # shows one more object under the answer: ``display`` in the cell, a new widget output once it has ended
_TICK = 0.1  # seconds between looks for a Stop while the cell waits for the turn's thread


class CellHandoff:
    """One ``%%oblix`` cell's turn, on a thread, handed over to approval boxes once the model asks to run code."""

    def __init__(
        self, stream: StreamingOutput, insert_cell: Callable[[str], bool] | None, keep_output: Callable[[str, Mapping[str, str]], bool]
    ) -> None:
        """``keep_output(model_id, bundle)`` asks the page to save a static copy beside the widgets (the lab extension's)."""
        self.stream = stream
        self.insert_cell = insert_cell
        self.keep_output = keep_output
        self.stop = threading.Event()  # the cell was interrupted: the turn's ``should_stop``
        self.tail: widgets.VBox | None = None  # what the cell shows below the answer once it has handed over
        self._events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._handing = threading.Lock()  # the cell's handover and the turn's end: one or the other first, never both halfway

    def run(self, turn: Callable[[Ask], T], conclude: Callable[[Callable[[], T], Show], None]) -> None:
        """Run ``turn(ask)`` on its thread; ``conclude(outcome, show)`` shows how it ended, in the cell or, after a handover, below.

        ``outcome()`` returns the turn's result or raises what it raised. The cell hands
        over at the first request to run code, and at a Stop: the turn's thread may be
        waiting on the model's first word, which it cannot be woken from, so the cell ends
        now and the interrupted answer is shown below when it is.
        """

        def work() -> None:
            try:
                ended: tuple[str, Any] = ("done", turn(self._ask))
            except BaseException as error:  # noqa: BLE001 - handed to whoever concludes, who raises it
                ended = ("failed", error)
            with self._handing:
                if self.tail is None:  # the cell still waits: it concludes
                    self._events.put(ended)
                    return
            self._conclude_below(conclude, ended)

        threading.Thread(target=contextvars.copy_context().run, args=(work,), name="oblix-cell-turn", daemon=True).start()
        kind, value = self._wait()
        if kind == "ask":  # the box, made by the turn's thread, which now waits for it
            try:
                with self._handing:
                    self._hand_over([value])
                    ended = None if self._events.empty() else self._events.get_nowait()  # the box expired meanwhile and the turn ended
            except BaseException:
                value.expire("This box could not be shown: the code will not run.")
                raise
            if ended is not None:
                self._conclude_below(conclude, ended)
        elif kind != "stopped":
            conclude(lambda: _outcome((kind, value)), display)

    def _conclude_below(self, conclude: Callable[[Callable[[], T], Show], None], ended: tuple[str, Any]) -> None:
        """Show how the turn ended below the box (the cell has handed over), then have the page keep a copy."""
        try:
            conclude(lambda: _outcome(ended), self._show_below)
        except Exception as error:  # noqa: BLE001 - a bug must show below the box, not vanish with the thread
            self._show_below(Message(f"Unexpected {type(error).__name__}: {error}"))
        self._keep()

    def _wait(self) -> tuple[str, Any]:
        """The turn's first event (its end, or a box to show); a Stop meanwhile stops the answer and ends the cell."""
        while True:
            try:
                return self._events.get(timeout=_TICK)
            except queue.Empty:
                continue
            except KeyboardInterrupt:
                self.stop.set()
                with self._handing:
                    try:
                        return self._events.get_nowait()  # it ended just now: conclude in the cell
                    except queue.Empty:
                        self._hand_over([])
                        return ("stopped", None)

    def _keep(self) -> None:
        """Once the answer is over, have the page keep a static copy of what the widgets show, for the saved notebook.

        Widgets are not saved with a notebook, so without it a reader (or the user, after
        reopening) would see the answer stop at the box. The page hides the copy while the
        live widgets are there (the lab extension's style).
        """
        if self.tail is None:
            return
        parts = [child.kept() if isinstance(child, ApprovalBox) else _shown(child) for child in self.tail.children]
        rich = "".join(part[0] for part in parts)
        plain = "\n\n".join(part[1] for part in parts if part[1])
        self.keep_output(self.tail.model_id, {"text/html": f"{OUTPUT_STYLE}<div class='oblix-kept'>{rich}</div>", "text/plain": plain})

    def _hand_over(self, shown: list[Any]) -> None:
        """End the cell's part: what comes next goes below its answer, in widgets (a display cannot change once its cell is over)."""
        after = widgets.Output()
        self.tail = widgets.VBox([*shown, after])
        self.tail.add_class("oblix-handoff")
        display(self.tail)
        self.stream.continue_in(after)

    def _ask(self, pending: PendingRun) -> RunOutcome:
        """The turn's ``Ask``, on its thread: the first box ends the cell, the later ones go below what came since."""
        box = ApprovalBox(pending, self.insert_cell)
        with self._handing:
            first = self.tail is None
            if first:
                self._events.put(("ask", box))
        if not first:
            after = widgets.Output()
            assert self.tail is not None
            self.tail.children = (*self.tail.children, box, after)
            self.stream.continue_in(after)
        return box.wait(self.stop.is_set)

    def _show_below(self, shown: Any) -> None:
        """``display`` once the cell has ended: one more output widget at the end of what it shows."""
        assert self.tail is not None
        output = widgets.Output()
        output.outputs = display_outputs(shown._repr_mimebundle_())
        self.tail.children = (*self.tail.children, output)


def _shown(output: widgets.Output) -> tuple[str, str]:
    """What an output widget of ours shows (an answer, a message), as HTML and text."""
    data = [output_item.get("data") or {} for output_item in output.outputs]
    return "".join(str(item.get("text/html", "")) for item in data), "\n".join(str(item.get("text/plain", "")) for item in data)


def _outcome(ended: tuple[str, Any]) -> Any:
    kind, value = ended
    if kind == "failed":
        raise value
    return value
