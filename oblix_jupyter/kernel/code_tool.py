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

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import OblixError
from .main_thread import OnMain
from .registry import ToolRefusal, checked, parsed
from .runs import MAX_RUNS, RUN_SECONDS, ApprovalExpired, Approvals, RunOutcome, RunRecord, RunRequest, execute, for_model

if TYPE_CHECKING:
    from .tools import ShowImage, ToolResult

Reply = bool | str  # True: run it; False: do not; a string: run that instead

RUN_CODE = "run_code"
RESULT_TOKENS = 800  # the most a run's result costs the model: its output's tails, not a flood
IMAGES_PER_RUN = 3  # of the images a run displayed, those a model that can see is shown (all are named)
PARAMETERS = {
    "code": {"type": "string", "description": "The Python source to run, as a cell of its own. Keep it short and focused."},
    "reason": {"type": "string", "description": "One line for the user: why this code should run."},
}


@dataclass(frozen=True)
class PendingRun:
    """A request waiting for the user, as a front end gets it: ``answer(reply)`` decides it and runs what was approved.

    Call ``answer`` on the kernel's main thread (a button's handler, or the API's hop to
    it); it raises ``ApprovalExpired`` once ``over`` is set: the answer ended (the session
    moved on), and the request can never run.
    """

    request: RunRequest
    answer: Callable[[Reply], RunOutcome]
    over: threading.Event


Ask = Callable[[PendingRun], RunOutcome]  # a front end's way of putting a request to the user, returning what came of it


def ask_by(approve: Callable[[RunRequest], Reply], on_main: OnMain[RunOutcome]) -> Ask:
    """The ``Ask`` of the Python API: ``approve(request)``'s reply, given and acted on on the kernel's main thread."""
    return lambda pending: on_main(lambda: pending.answer(approve(pending.request)))


class CodeTool:
    """One answer's ``run_code``: at most ``max_runs`` proposals, each asked with ``ask`` and run within ``timeout`` seconds.

    ``show`` (given when the model can see) makes the images a run displayed ready to
    send; the records of the answer's runs are kept by the arguments the model wrote,
    for the stored tool calls.
    """

    name = RUN_CODE

    def __init__(
        self,
        shell: Any,
        ask: Ask,
        answer_id: str,
        count: Callable[[str], int],
        *,
        max_runs: int = MAX_RUNS,
        timeout: float = RUN_SECONDS,
        show: ShowImage | None = None,
    ) -> None:
        self.shell = shell
        self.ask = ask
        self.count = count
        self.timeout = timeout
        self.show = show
        self.approvals = Approvals(answer_id, max_runs)
        self._records: list[tuple[str, RunRecord]] = []  # (the model's arguments, the run's record), in order

    def schema(self) -> dict[str, Any]:
        """The tool as the model is offered it, its limits told."""
        description = (
            "Propose Python code to run in the user's notebook kernel, in its namespace, as a new cell. The user sees the code "
            "and your reason and decides: it runs only if they approve (they may edit it first), and you read its output "
            f"afterwards. At most {self.approvals.max_runs} proposals per answer; each run is stopped after {self.timeout:g} s. "
            "Prefer the read-only tools to look at data; propose code to compute, plot or change something."
        )
        parameters = {"type": "object", "properties": PARAMETERS, "required": ["code", "reason"], "additionalProperties": False}
        return {"type": "function", "function": {"name": RUN_CODE, "description": description, "parameters": parameters}}

    def run(self, arguments: str | Mapping[str, Any] | None) -> ToolResult:
        """Propose the model's code, ask the user, run what they approved; never raises for the model's mistakes."""
        from .tools import ToolResult

        try:
            given = checked(parsed(arguments), self.schema()["function"]["parameters"])
            request = self.approvals.propose(given["code"], " ".join(given["reason"].split()))
        except ToolRefusal as refusal:
            return ToolResult(str(refusal), f"{RUN_CODE} failed: {refusal}", ok=False)
        try:
            outcome = self.ask(PendingRun(request, self._answer(request), self.approvals.over))
        except ApprovalExpired as expired:
            return ToolResult(f"Not run: {expired}", f"{RUN_CODE}: expired before the user answered", ok=False)
        record = RunRecord.of(outcome, self.count)
        self._records.append((arguments if isinstance(arguments, str) else "", record))
        parts = []
        for image in outcome.images[:IMAGES_PER_RUN] if self.show is not None else ():
            try:
                parts.append(self.show(image)[0])
            except OblixError:
                pass  # named in the result's text all the same
        return ToolResult(for_model(outcome, RESULT_TOKENS, self.count), record.line(), ok=True, parts=tuple(parts))

    def _answer(self, request: RunRequest) -> Callable[[Reply], RunOutcome]:
        def answer(reply: Reply) -> RunOutcome:
            return execute(self.shell, self.approvals.decide(request.id, reply), self.timeout)

        return answer

    def record_for(self, arguments: str) -> RunRecord | None:
        """The record of the run the model asked for with ``arguments`` (the first not yet taken), for the stored call."""
        for position, (given, record) in enumerate(self._records):
            if given == arguments:
                del self._records[position]
                return record
        return None

    def close(self) -> None:
        """End the answer: a request still waiting can never be approved now."""
        self.approvals.close()
