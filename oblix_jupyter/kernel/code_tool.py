"""The ``run_code`` tool of one answer: each proposal put to the person who can approve it, run as their cell, reported back.

The turn offers it only when a front end can ask someone (``Ask``): the Python API's
``approve`` callback, the approval box of a cell or of the chat panel, the terminal's
y/N/e. What the model writes only proposes (``Approvals.propose``); the ask gets the
user's reply and hands it to ``PendingRun.answer``, which decides the request (once,
while the answer lasts) and runs what was approved, byte for byte, on the kernel's main
thread (``runs.execute``). The model reads ``runs.for_model`` of the outcome, and the answer
keeps ``runs.RunRecord``: nothing else of a run leaves here.
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from .main_thread import OnMain
from .registry import ToolRefusal, ToolRegistry
from .runs import (
    DECLINED_TEXT,
    MAX_RUNS,
    RUN_SECONDS,
    ApprovalExpired,
    Approvals,
    InvalidApproval,
    RunOutcome,
    RunRecord,
    RunRequest,
    execute,
    for_model,
)

if TYPE_CHECKING:
    from .images import NotebookImage
    from .tools import ToolResult

Reply = bool | str  # True: run it; False: do not; a string: run that instead

RUN_CODE = "run_code"
RESULT_TOKENS = 800  # the most a run's result costs the model: its output's tails, not a flood
_TOOL = ToolRegistry()  # run_code alone, declared on ``CodeTool`` as the read-only tools are on ``KernelTools``
PARAMETERS = {
    "code": {"type": "string", "description": "The Python source to run, as a cell of its own. Keep it short and focused."},
    "reason": {"type": "string", "description": "One line for the user: why this code should run."},
}


@dataclass(frozen=True)
class PendingRun:
    """A request waiting for the user, as a front end gets it: ``answer(reply)`` decides it and runs what was approved.

    Call ``answer`` on the kernel's main thread (a button's handler, or the API's hop to
    it); it raises ``ApprovalExpired`` once ``over`` is set: the answer ended (the session
    moved on), and the request can never run. A front end that stops waiting calls
    ``withdraw`` first: False means the user decided meanwhile, and the outcome follows.
    """

    request: RunRequest
    answer: Callable[[Reply], RunOutcome]
    over: threading.Event
    withdraw: Callable[[], bool]


Ask = Callable[[PendingRun], RunOutcome]  # a front end's way of putting a request to the user, returning what came of it


def ask_by(approve: Callable[[RunRequest], Reply], on_main: OnMain[RunOutcome]) -> Ask:
    """The ``Ask`` of the Python API: ``approve(request)``'s reply, given and acted on on the kernel's main thread."""
    return lambda pending: on_main(lambda: pending.answer(approve(pending.request)))


class CodeTool:
    """One answer's ``run_code``: at most ``max_runs`` proposals, each asked with ``ask`` and run within ``timeout`` seconds.

    ``show_images`` (the turn's read-only tools', which keep the answer's image limits)
    makes the images a run displayed ready for a model that can see. Each run's record
    goes with its result (``ToolResult.kept``), for the answer's stored tool calls.
    """

    name = RUN_CODE

    def __init__(
        self,
        shell: Any,
        ask: Ask,
        count: Callable[[str], int],
        *,
        max_runs: int = MAX_RUNS,
        timeout: float = RUN_SECONDS,
        show_images: Callable[[Sequence[NotebookImage]], list[dict[str, Any]]] | None = None,
    ) -> None:
        self.shell = shell
        self.ask = ask
        self.count = count
        self.timeout = timeout
        self.show_images = show_images
        self.approvals = Approvals(max_runs)

    def schema(self) -> dict[str, Any]:
        """The tool as the model is offered it, its limits told."""
        return _TOOL.schemas(self)[0]

    def run(self, arguments: str | Mapping[str, Any] | None) -> ToolResult:
        """Propose the model's code, ask the user, run what they approved; never raises for the model's mistakes."""
        from .tools import ToolResult

        try:
            return cast("ToolResult", _TOOL.call(self, RUN_CODE, arguments))
        except (ToolRefusal, ApprovalExpired) as refusal:  # a bad call, or one made once its answer was over
            return ToolResult(str(refusal), f"{RUN_CODE} failed: {refusal}", ok=False)

    @_TOOL.tool(
        RUN_CODE,
        lambda tool: (
            "Propose Python code to run in the user's notebook kernel, in its namespace, as a new cell. The user sees the code "
            "and your reason and decides: it runs only if they approve (they may edit it first), and you read its output "
            f"afterwards. At most {tool.approvals.max_runs} proposals per answer; each run is stopped after {tool.timeout:g} s. "
            "Prefer the read-only tools to look at data; propose code to compute, plot or change something."
        ),
        properties=PARAMETERS,
        required=("code", "reason"),
    )
    def _propose(self, code: str, reason: str) -> ToolResult:
        from .tools import ToolResult

        request = self.approvals.propose(code, " ".join(reason.split()))
        try:
            pending = PendingRun(request, self._answer(request), self.approvals.over, functools.partial(self.approvals.withdraw, request.id))
            outcome = self.ask(pending)
        except ApprovalExpired as expired:
            return ToolResult(f"Not run: {expired}", f"{RUN_CODE}: expired before the user answered", ok=False)
        except InvalidApproval as invalid:  # the API's callback returned something else: its author must hear of it
            warnings.warn(f"{invalid} The code did not run.", stacklevel=2)
            return ToolResult(DECLINED_TEXT, f"{RUN_CODE}: not run ({invalid})", ok=False)
        record = RunRecord.of(outcome, self.count)
        parts = self.show_images(outcome.images) if self.show_images is not None and outcome.images else []
        text = for_model(outcome, RESULT_TOKENS, self.count)
        return ToolResult(text, record.line(), ok=True, parts=tuple(parts), kept={"run": record.entry()})

    def _answer(self, request: RunRequest) -> Callable[[Reply], RunOutcome]:
        def answer(reply: Reply) -> RunOutcome:
            return execute(self.shell, self.approvals.decide(request.id, reply), self.timeout)

        return answer

    def close(self) -> None:
        """End the answer: a request still waiting can never be approved now."""
        self.approvals.close()
