"""What a turn sent, as a compact record kept on its answer (``render.sent_line`` reads it back in words).

A plan (``selector.ContextPlan``) holds the texts it sent, which the session already
has; after the turn only the choices matter: which earlier messages went (by id, whole
or cut, and why), which variables and notebook parts, the tools offered, and the input
against the budget. The record keeps those as ids, names and counts, runs of numbered
ids folded into ranges, so that a typical turn's record is a few hundred bytes however
long the conversation. Anyone who can read the answer can later see what its model was
shown: the record holds no text of the notebook's or the conversation's, only names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .selector import ContextPlan

RECORD_VERSION = 1
_NUMBERED = re.compile(r"msg_(\d+)")


def record_of(plan: ContextPlan, tools: Sequence[str] = (), images: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """The record of a turn that sent ``plan``, offered the model ``tools`` (their names) and attached ``images`` ((label, how it went)).

    Keys: ``v`` (this format's version); ``messages`` (reason -> id ranges of the earlier
    messages sent for it); ``cut`` (id ranges of those sent cut); ``left_out`` (how many
    earlier messages were not sent); ``variables`` ([name, tokens] each); ``error``
    (tokens of the last error, if sent); ``cells`` ([count, tokens], if any); ``tools``
    (names offered); ``images`` ([label, "sent" or why not] each); ``used`` and ``budget`` (tokens of the context, counted here);
    ``input`` (tokens in over the turn's requests, as counted for the footer). Empty
    parts are left out.
    """
    by_reason: dict[str, list[str]] = {}
    cut: list[str] = []
    variables: list[list[Any]] = []
    error = 0
    cells = [0, 0]
    for item in plan.items:
        if item.message_id is not None:
            by_reason.setdefault(item.reason, []).append(item.message_id)
            if item.cut:
                cut.append(item.message_id)
        elif item.reason == "variable":
            variables.append([(item.label or "").strip("`"), item.tokens])
        elif item.reason == "error":
            error += item.tokens
        elif item.reason == "cells":
            cells = [cells[0] + 1, cells[1] + item.tokens]
    record: dict[str, Any] = {
        "v": RECORD_VERSION,
        "messages": {reason: fold(ids) for reason, ids in by_reason.items()},
        "cut": fold(cut),
        "left_out": len(plan.omitted),
        "variables": variables,
        "error": error,
        "cells": cells if cells[0] else None,
        "tools": list(tools),
        "images": [list(image) for image in images],
        "used": plan.used,
        "budget": plan.budget,
        "input": sum(tokens for _, tokens, _ in plan.requests) or None,
    }
    return {key: value for key, value in record.items() if value or key in ("v", "used", "budget")}


def fold(ids: Iterable[str]) -> list[str]:
    """Message ids as runs: ``msg_3``, ``msg_4``, ``msg_5`` -> ``msg_3-5``; other ids as they are, in order."""
    runs: list[str] = []
    first = last = None
    for message_id in ids:
        number = _number(message_id)
        if number is not None and last is not None and number == last + 1:
            last = number
            continue
        if last is not None:
            runs.append(_run(first, last))
            first = last = None
        if number is None:
            runs.append(message_id)
        else:
            first = last = number
    if last is not None:
        runs.append(_run(first, last))
    return runs


def _number(message_id: str) -> int | None:
    match = _NUMBERED.fullmatch(message_id)
    return int(match[1]) if match else None


def _run(first: int | None, last: int) -> str:
    return f"msg_{last}" if first == last else f"msg_{first}-{last}"
