"""The approval box's own logic, in this process: a click and the answer's end racing, and an expired box that cannot run.

The box is the real widget, clicked as a front end's message would click it; the
request is a real ``Approvals`` ledger's, whose ``answer`` records what it would run.
"""

from __future__ import annotations

import functools
import threading

import pytest

from oblix_jupyter.frontends.approval import _POLL_SECONDS, ApprovalBox
from oblix_jupyter.kernel.code_tool import PendingRun
from oblix_jupyter.kernel.runs import ApprovalExpired, Approvals, RunOutcome


def pending_box(code: str = "x = 1") -> tuple[ApprovalBox, Approvals, list[str | None]]:
    approvals = Approvals()
    request = approvals.propose(code, "why")
    ran: list[str | None] = []

    def answer(reply: bool | str) -> RunOutcome:
        decision = approvals.decide(request.id, reply)
        ran.append(decision.code)
        return RunOutcome(decision)

    return ApprovalBox(PendingRun(request, answer, approvals.over, functools.partial(approvals.withdraw, request.id))), approvals, ran


def test_a_run_clicked_as_the_answer_is_stopped_is_reported_as_run_not_lost():
    box, _, ran = pending_box()
    box.run_button.click()  # handled just before the turn's thread looked at Stop
    outcome = box.wait(stopped=lambda: True)
    assert outcome.ran and ran == ["x = 1"], "what ran is what the model hears of"
    assert "oblix-decided" in box._dom_classes and "oblix-expired" not in box._dom_classes


def test_a_run_under_way_when_the_answer_is_stopped_is_waited_for_not_expired():
    """The click was decided and its code is running on the main thread; the box hears the outcome only later."""
    approvals = Approvals()
    request = approvals.propose("x = 1", "why")
    box = ApprovalBox(PendingRun(request, pytest.fail, approvals.over, functools.partial(approvals.withdraw, request.id)))
    decision = approvals.decide(request.id, True)
    threading.Timer(3 * _POLL_SECONDS, box._settle, [RunOutcome(decision)]).start()
    outcome = box.wait(stopped=lambda: True)  # polls, sees Stop, and may not withdraw what is decided
    assert outcome.ran and outcome.decision.code == "x = 1"
    assert "oblix-expired" not in box._dom_classes


def test_once_the_answer_is_stopped_or_over_no_click_runs_the_code():
    box, _, ran = pending_box()
    with pytest.raises(ApprovalExpired):
        box.wait(stopped=lambda: True)
    box.run_button.click()
    box._reply("x = 2")  # an edit's Run, as its button would send it
    assert ran == [] and "oblix-expired" in box._dom_classes and box.run_button.disabled

    box, approvals, ran = pending_box()
    approvals.close()  # a later turn of the session ended the answer
    with pytest.raises(ApprovalExpired):
        box.wait()
    box.run_button.click()
    assert ran == []


def test_an_empty_edit_leaves_the_request_waiting_and_a_real_one_runs_as_edited():
    box, _, ran = pending_box()
    box.edit_button.click()
    box.editor.value = "   "
    box.run_edit_button.click()
    assert ran == [] and not box.run_edit_button.disabled and "not" in box.status.value.lower()
    box.editor.value = "x = 3"
    box.run_edit_button.click()
    assert ran == ["x = 3"] and box.wait().decision.action == "edited"
