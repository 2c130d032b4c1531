"""The record of what a turn sent (``context.record``) and its line in words (``render.sent_line``)."""

from __future__ import annotations

import json

import pytest

from oblix_jupyter.context.inputs import NotebookContext, VariableSummary
from oblix_jupyter.context.record import fold, record_of
from oblix_jupyter.context.selector import select_context
from oblix_jupyter.render import sent_line


def words(text: str) -> int:
    return len(text.split())


def test_runs_of_numbered_ids_fold_and_other_ids_stay():
    assert fold(["msg_1", "msg_2", "msg_3", "msg_7", "imported-a", "msg_8", "msg_9"]) == ["msg_1-3", "msg_7", "imported-a", "msg_8-9"]
    assert fold([]) == [] and fold(["msg_4"]) == ["msg_4"]


def test_a_long_conversation_s_record_is_small_and_names_every_choice():
    session = {
        "messages": [
            {"id": f"msg_{n}", "role": "user" if n % 2 else "assistant", "content": f"turn {n} about {'plots' if n == 40 else 'data'} " * 30}
            for n in range(1, 1001)
        ]
    }
    variables = [VariableSummary("df", "`df`: DataFrame 3 x 2", 8), VariableSummary("token", "", 0, excluded=True)]
    notebook = NotebookContext(error="KeyError: 'x'", cells=("df.head()",), force_error=True)
    plan = select_context(session, "what about plots?", 1500, words, variables=variables, notebook=notebook)

    record = record_of(plan, ["list_variables", "notebook_cell"])

    sent = {item.message_id for item in plan.items if item.message_id}
    listed = {f"msg_{n}" for runs in record["messages"].values() for run in runs for n in _numbers(run)}
    assert listed == sent and record["left_out"] == len(plan.omitted) == 1000 - len(sent)
    assert record["variables"] == [["df", next(i.tokens for i in plan.items if i.reason == "variable")]]
    assert record["error"] > 0 and record["tools"] == ["list_variables", "notebook_cell"]
    assert (record["used"], record["budget"]) == (plan.used, 1500)
    assert len(json.dumps(record)) < 400, record
    line = sent_line(record)
    assert line.startswith("sent msg_") and "variables df (" in line and "the last error" in line and "earlier left out" in line


def _numbers(run: str) -> range:
    first, _, last = run.removeprefix("msg_").partition("-")
    return range(int(first), int(last or first) + 1)


@pytest.mark.parametrize(
    "record",
    [
        None, "text", [], {"messages": "msg_1"}, {"messages": {"recent": "msg_1"}, "left_out": "9", "cells": [1]},
        {"v": 99, "messages": {"recent": ["msg_1"]}, "variables": [["df"], "x", ["df", "many"]], "error": True, "budget": "4k"},
    ],
)
def test_a_damaged_or_newer_record_gives_a_line_and_never_an_error(record):
    line = sent_line(record)
    assert isinstance(line, str) and line


def test_every_message_sent_in_part_is_recorded_as_cut_whichever_way_it_was_cut():
    """A message may be cut to fit (its relevant part) or sent as its best passages ("1 of 40 passages"): both are cut."""
    messages = []
    for n in range(1, 41):
        about = lambda k, n=n: "the revenue plot and its bend" if (n == 20 and k == 3) else "ordinary data cleaning steps"  # noqa: E731
        body = " ".join(f"Sentence {k} of turn {n} talks about {about(k)}." for k in range(40))
        messages.append({"id": f"msg_{n}", "role": "user" if n % 2 else "assistant", "content": body})
    plan = select_context({"messages": messages}, "why does the revenue plot bend?", 2500, words)

    content = {message["id"]: message["content"] for message in messages}
    in_part = [item.message_id for item in plan.items if item.message_id and item.text != content[item.message_id]]
    assert any("passages" in item.note for item in plan.items), "the case of passages is exercised"
    assert record_of(plan)["cut"] == fold(in_part)
