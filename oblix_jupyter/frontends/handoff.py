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
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import ipywidgets as widgets
from IPython.display import display

from .approval import ApprovalBox
from .display import Message, StreamingOutput

if TYPE_CHECKING:
    from ..kernel.code_tool import Ask, PendingRun
    from ..kernel.runs import RunOutcome

T = TypeVar("T")
Show = Callable[[Any], None]  # shows one more object under the answer: ``display`` in the cell, a new widget output once it has ended
_TICK = 0.1  # seconds between looks for a Stop while the cell waits for the turn's thread


class CellHandoff:
    """One ``%%oblix`` cell's turn, on a thread, handed over to approval boxes once the model asks to run code."""

    def __init__(self, stream: StreamingOutput, insert_cell: Callable[[str], bool] | None) -> None:
        self.stream = stream
        self.insert_cell = insert_cell
        self.stop = threading.Event()  # the cell was interrupted: the turn's ``should_stop``
        self.tail: widgets.VBox | None = None  # what the cell shows below the answer once it has handed over
        self._events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._boxes: queue.SimpleQueue[ApprovalBox] = queue.SimpleQueue()

    def run(self, turn: Callable[[Ask], T], conclude: Callable[[Callable[[], T], Show], None]) -> None:
        """Run ``turn(ask)`` on its thread; ``conclude(outcome, show)`` shows how it ended, in the cell or, after a handover, below the box.

        ``outcome()`` returns the turn's result or raises what it raised.
        """
        def work() -> None:
            try:
                ended: tuple[str, Any] = ("done", turn(self._ask))
            except BaseException as error:  # noqa: BLE001 - handed to whoever concludes, who raises it
                ended = ("failed", error)
            if self.tail is None:  # set only by the cell, before it gives this thread its first box: no race
                self._events.put(ended)
                return
            try:
                conclude(lambda: _outcome(ended), self._show_below)
            except Exception as error:  # noqa: BLE001 - a bug must show below the box, not vanish with the thread
                self._show_below(Message(f"Unexpected {type(error).__name__}: {error}"))

        threading.Thread(target=contextvars.copy_context().run, args=(work,), name="oblix-cell-turn", daemon=True).start()
        kind, value = self._wait()
        if kind == "ask":
            box = ApprovalBox(value, self.insert_cell)
            after = widgets.Output()
            self.tail = widgets.VBox([box, after])
            display(self.tail)
            self.stream.continue_in(after)
            self._boxes.put(box)
            return  # the cell ends here; the answer waits for the box
        conclude(lambda: _outcome((kind, value)), display)

    def _wait(self) -> tuple[str, Any]:
        """The turn's first event (its end, or a request to run code), a Stop meanwhile stopping the answer."""
        while True:
            try:
                return self._events.get(timeout=_TICK)
            except queue.Empty:
                continue
            except KeyboardInterrupt:
                self.stop.set()

    def _ask(self, pending: PendingRun) -> RunOutcome:
        """The turn's ``Ask``, on its thread: the first request ends the cell, the later ones go below what came since."""
        if self.tail is None:
            self._events.put(("ask", pending))
            box = self._boxes.get()
        else:
            box = ApprovalBox(pending, self.insert_cell)
            after = widgets.Output()
            self.tail.children = (*self.tail.children, box, after)
            self.stream.continue_in(after)
        return box.wait()

    def _show_below(self, shown: Any) -> None:
        """``display`` once the cell has ended: one more output widget at the end of what it shows."""
        assert self.tail is not None
        output = widgets.Output()
        output.outputs = ({"output_type": "display_data", "data": shown._repr_mimebundle_(), "metadata": {}},)
        self.tail.children = (*self.tail.children, output)


def _outcome(ended: tuple[str, Any]) -> Any:
    kind, value = ended
    if kind == "failed":
        raise value
    return value
