"""The context selector: what the model sees on a turn, and why.

A pure function of (session, prompt, notebook state, budget, token counter) so it can be
tested exhaustively and shown to the user: the plan it returns is exactly what the
gateway sends, with one explanation line per choice. The budget is shared out rather
than filled from the newest message back:

1. the system message (the session's context, instructions, the notebook variables,
   error and cells the prompt refers to, and a line saying how much was left out);
2. the prompt itself (``PromptTooLarge`` when it cannot fit);
3. pinned messages, and the session's first exchange (it usually states the task);
4. the last two exchanges, then older recent exchanges up to ``recent_share`` of what is left;
5. everything else goes to the earlier messages most relevant to the prompt, by words
   (BM25) and meaning (embedding vectors, when the caller passes them), fused by rank,
   each message raised by a share of the relevance of messages near it (``relevance.spread``)
   and, when the prompt names a date, the messages of that day (``relevance.dated``),
   the most relevant first; a relevant message brings its partner (question with answer), and an
   over-long one is cut to its relevant part with a visible ``[…]``;
6. room that relevance leaves unused goes back to recency.

A conversation that fits the budget whole is sent whole, and steps 3 to 6 are skipped.
The plan is always chronological, and exchanges stay whole where the budget allows.
"""

from __future__ import annotations

import functools
import html
import json
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cached_property
from itertools import islice, repeat
from typing import Any

from ..errors import PromptTooLarge
from .expansion import WordTable
from .inputs import NotebookContext, VariableSummary
from .relevance import (
    ELLIPSIS,
    LexicalIndex,
    best_passages,
    cut_to_relevant,
    dated,
    fuse,
    join_passages,
    named_days,
    query_terms,
    semantic_scores,
    spread,
    truncate_to_tokens,
    unknown_count,
)

# Chat formats wrap each message in a few tokens of their own (role markers etc.).
MESSAGE_OVERHEAD = 4
DEFAULT_RECENT_SHARE = 0.05  # beyond the last two exchanges; LoCoMo dev, 2,000 tokens: 86.0% at 0.05, 85.5% at 0.1, 84.1% at 0.25
NOTEBOOK_SHARE = 0.5  # variables, error and cells together take at most this share of the room
FIRST_EXCHANGE_SHARE = 0.25  # the automatically pinned first exchange is cut beyond this share
RELEVANCE_FLOOR = 0.05  # fused relevance (0..1) below which a message does not count as relevant
NEIGHBOUR_WHOLE = 80  # a chosen passage's partner message comes along whole if it is this short...
NEIGHBOUR_RELEVANCE = 0.8  # ...and the passage at least this relevant: 0.7 before the spread reached 4 messages
# (``relevance.spread``); with it, LoCoMo dev left-out mean at 1,000 tokens 82.8% at 0.7, 84.5% tuned (0.8 on four of five)
MIN_PIECE = 24  # no cut message is made smaller than this
# Meaning is used when at least this share of passages has a vector. LoCoMo dev, 2,000
# tokens, vectors missing at random: 86.0% with none missing, 82.6% with 30%, 77.9% with
# 60%, words alone 79.2%.
MEANING_COVERAGE = 0.5
CANDIDATES = 400  # passages considered per turn (the rest could never fit)

TOOLS_NOTED = 3  # tool calls named under an earlier answer that used tools
# An answer that never came: the model failed before any text, and the message holds the
# error the user was shown. Neither it nor a prompt that got nothing else is ever sent.
FAILED = "failed"
_FAILURES = frozenset({FAILED, "error"})  # how a turn that raised ``ModelError`` ends: retrying it starts it over
_STATUS_MARKS = {
    "error": "[answer incomplete: the model failed while answering]",
    "interrupted": "[answer incomplete: interrupted]",
}
_ASKS_ABOUT_NOTEBOOK = re.compile(
    r"\b(error|errors|exception|traceback|stack ?trace|fail\w*|crash\w*|broke\w*|bug\w*|went wrong|"
    r"(does ?n[o']t|not) work\w*|this cell|that cell|the cell|last cell|above)\b",
    re.IGNORECASE,
)
# The relevance signal computed ahead: the session's passage vectors (a VectorTable, or plain vectors by message
# id) and the prompt's vector.
Embeddings = tuple[Mapping[str, Any] | None, Sequence[float] | None]
_CONVERSATION_ROLES = frozenset({"user", "assistant"})
# Lower numbers are dropped last when the assembled plan must shrink.
_PRIORITY = {"pinned": 0, "recent": 2, "relevant": 3, "neighbour": 3, "fill": 4}


@dataclass(slots=True)  # one per message sent: plain slots keep a long plan cheap to build
class PlanItem:
    """One entry of the plan: a message, or a part of the system message, and why it is there."""

    role: str
    reason: str  # system, prompt, pinned, recent, relevant, neighbour, variable, error, cells, tool call, tool result
    tokens: int
    message_id: str | None = None
    score: float | None = None
    note: str = ""
    in_system: bool = False  # a part of the system message: its tokens are in the system item's
    label: str | None = None  # what to show in the "message" column when it is not a message id
    text: str = ""  # exactly what was sent for it
    cut: bool = False  # a message sent in part (its relevant passages), not whole

    @property
    def what(self) -> str:
        """What the row is, for its "message" column."""
        return self.label or self.message_id or _UNLABELLED.get(self.reason, self.reason)


_UNLABELLED = {"system": "system message", "prompt": "the prompt"}


@dataclass
class ContextPlan:
    """The messages to send, in order, with what was chosen, dropped and why.

    ``items`` (one per message or system part, with its reason) and ``omitted`` (the
    ids of the earlier messages left out) are built when first read: a turn needs only
    ``messages`` before its request goes out, and listing what it left out of a long
    session is work that grows with it (measured: see README's "Speed"). After the
    turn, ``add_requests`` adds what the model was sent beyond the plan: a model that
    calls tools gets the plan again with every request, followed by the calls and
    results of the rounds before it.
    """

    messages: list[dict[str, str]]
    list_items: Callable[[], list[PlanItem]] = field(repr=False)
    budget: int
    list_omitted: Callable[[], list[str]] = field(default=list, repr=False)
    dropped: list[str] = field(default_factory=list)  # variables and notebook parts left out, with why
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # how relevance was judged
    variables: list[VariableSummary] = field(default_factory=list)
    tool_items: list[PlanItem] = field(default_factory=list)  # the tool rounds' messages, one row each
    # Each request of the turn: (messages sent, input tokens, whether the model's server counted them).
    requests: list[tuple[int, int, bool]] = field(default_factory=list)
    # How a text is shown: the client withholds the secrets named for the turn, as in the session.
    shown: Callable[[str], str] = field(default=str, repr=False)

    @cached_property
    def items(self) -> list[PlanItem]:
        return self.list_items()

    @cached_property
    def omitted(self) -> list[str]:
        return self.list_omitted()

    @property
    def used(self) -> int:
        return sum(item.tokens for item in self.items if not item.in_system)

    def add_requests(
        self, tool_messages: Sequence[Mapping[str, Any]], requests: Sequence[tuple[int, int, bool]], count: Callable[[str], int]
    ) -> None:
        """Record what the turn sent: the tool rounds' messages (as sent, after the plan's) and each request's input tokens."""
        names: dict[str, str] = {}
        round_number = 0
        for message in tool_messages:
            if message.get("role") == "assistant":
                round_number += 1
                calls = [call.get("function") or {} for call in message.get("tool_calls") or ()]
                for call, function in zip(message.get("tool_calls") or (), calls):
                    names[str(call.get("id"))] = str(function.get("name"))
                asked = [f"{function.get('name')}({function.get('arguments')})" for function in calls]
                text = "\n".join([*filter(None, [message.get("content")]), *asked])
                label = ", ".join(str(function.get("name")) for function in calls)
                item = PlanItem("assistant", "tool call", count(text) + MESSAGE_OVERHEAD, label=label, text=text)
            else:
                text = str(message.get("content") or "")
                label = names.get(str(message.get("tool_call_id")), "tool")
                item = PlanItem(str(message.get("role")), "tool result", count(text) + MESSAGE_OVERHEAD, label=label, text=text)
            item.note = f"tool round {round_number}"  # the requests after this round send it again
            self.tool_items.append(item)
        self.requests = [(int(messages), int(tokens), bool(reported)) for messages, tokens, reported in requests]

    def _rows(self) -> list[tuple[PlanItem, tuple[str, ...]]]:
        rows = []
        for number, item in enumerate([*self.items, *self.tool_items], start=1):
            why = item.reason if item.score is None else f"{item.reason} ({item.score:.2f})"
            rows.append((item, (str(number), item.role, why, item.what, str(item.tokens), item.note)))
        return rows

    def _summary(self) -> tuple[str, list[str]]:
        """The totals in plain words: the context against the budget, then the turn's input as its requests add up."""
        left_out = len(self.omitted)
        context = f"{self.used:,} of {self.budget:,} tokens used" + (
            f"; {_count(left_out, 'earlier message')} left out." if left_out else "."
        )
        if not self.requests:
            return context, []
        total = sum(tokens for _, tokens, _ in self.requests)
        counter = "the model's server" if all(reported for _, _, reported in self.requests) else "litellm"
        if len(self.requests) == 1:
            lines = [f"{total:,} tokens in, as {counter} counted them (the footer's figure); {self.used:,} counted here."]
        else:
            lines = [
                f"{total:,} tokens in over {len(self.requests)} requests, as {counter} counted them (the footer's figure): "
                "each request sends the context again, with the tool calls and results of the rounds before it."
            ]
            plan_rows, plan_messages = len(self.items), len(self.messages)
            for number, (messages, tokens, _) in enumerate(self.requests, start=1):
                carried = self.tool_items[: max(0, messages - plan_messages)]
                ours = self.used + sum(item.tokens for item in carried)
                lines.append(f"request {number} (rows 1–{plan_rows + len(carried)}): {ours:,} tokens counted here, {tokens:,} by {counter}.")
        if counter == "the model's server":
            lines.append("The server also counts its chat format and the definitions of any tools offered, which no row shows.")
        return context, lines

    def _extra(self) -> list[str]:
        return [*self.warnings, *self.dropped, *self.notes]

    def explain(self, texts: bool = False) -> str:
        """A Markdown table of the plan, for ``--explain`` in a terminal; ``texts`` adds what each row sent, in full."""
        lines = ["| # | role | why | message | tokens | note |", "|---|---|---|---|---|---|"]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for _, row in self._rows()]
        context, totals = self._summary()
        lines.append(f"\n**{context}**")
        lines += [f"- {text}" for text in [*totals, *self._extra()]]
        if texts:
            lines.append("\nWhat each row sent:")
            for item, row in self._rows():
                sent = self.shown(item.text) or "(empty)"
                lines.append(f"\n#{row[0]} {item.role}, {item.what}:\n" + "\n".join("    " + line for line in sent.splitlines()))
        return "\n".join(lines)

    def explain_html(self) -> str:
        """The same as HTML: one line per row, which opens on the exact text it sent, escaped (nothing in it is markup).

        Each row is a ``<details>`` rather than a table row, so that its text opens under
        it at the full width, which a table cell would not give in a narrow sidebar.
        """
        columns = ("number", "role", "why", "what", "tokens", "note")  # as ``_rows`` gives them
        shown_as = ("number", "role", "why", "tokens", "what", "note")  # the one that may wrap last, after the narrow ones

        def line(cells: Sequence[str]) -> str:
            named = dict(zip(columns, cells))
            return "".join(f"<span class='oblix-plan-{name}'>{html.escape(named[name])}</span>" for name in shown_as if named[name] or name != "note")

        head = f"<div class='oblix-plan-head'>{line(('#', 'role', 'why', 'message', 'tokens', ''))}</div>"
        rows = "".join(
            f"<details class='oblix-plan-row'><summary>{line(cells)}</summary><pre>{html.escape(self.shown(item.text))}</pre></details>"
            for item, cells in self._rows()
        )
        context, totals = self._summary()
        extra = "".join(f"<li>{html.escape(text)}</li>" for text in [*totals, *self._extra()])
        return (
            f"<div class='oblix-plan'>{head}{rows}</div>"
            f"<p><b>{html.escape(context)}</b></p>" + (f"<ul>{extra}</ul>" if extra else "")
        )

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        # No text/markdown: JupyterLab would render raw HTML in it (a message's text) live.
        return {"text/plain": self.explain(), "text/html": self.explain_html()}


def _count(number: int, thing: str) -> str:
    """"1 earlier message", "3 earlier messages"."""
    return f"{number:,} {thing}" + ("" if number == 1 else "s")


def system_text(context: dict[str, Any], omitted: int, sections: Sequence[str] = (), instructions: str | None = None) -> str | None:
    """The system message: instructions, the session's initial context, notebook state, and a note when history was cut."""
    parts = [instructions] if instructions else []
    if context:
        parts.append("Context for this conversation (JSON):\n" + json.dumps(context, ensure_ascii=False, indent=1))
    if sections:
        parts.append("The user's notebook, as it is now:\n\n" + "\n\n".join(sections))
    if omitted:
        parts.append(
            f"{omitted} earlier message(s) of this conversation were omitted to fit the context window; "
            "the earlier ones shown were chosen as relevant to the new prompt."
        )
    return "\n\n".join(parts) or None


def select_context(
    session: dict[str, Any] | None,
    prompt: str,
    budget: int,
    count: Callable[[str], int],
    history: bool = True,
    *,
    variables: Sequence[VariableSummary] = (),
    notebook: NotebookContext | None = None,
    pinned: Collection[str] = (),
    pin_first_exchange: bool = True,
    vectors: Embeddings | None = None,
    words: WordTable | None = None,
    lexical_index: LexicalIndex | None = None,
    recent_share: float = DEFAULT_RECENT_SHARE,
    instructions: str | None = None,
) -> ContextPlan:
    """Choose what to send for ``prompt`` within ``budget`` tokens; see the module docstring.

    ``count`` gives the tokens of a text; ``budget`` is the input window left after the
    answer's reserve. ``variables`` come from ``kernel.variables.summarize_variables`` and
    ``notebook`` from ``kernel.state.gather_notebook_context``. ``vectors`` switches on
    semantic relevance (vectors by message id, the prompt's vector); ``words`` (the
    conversation's words with their vectors) widens the prompt's words by meaning
    (``expansion``); ``lexical_index`` is a kept ``relevance.LexicalIndex`` of these
    messages (rebuilt here if it is stale). They matter only when the conversation does
    not fit whole: a caller that computes them only then uses ``start_selection`` and
    looks at ``Selection.fits`` first.
    Raises ``PromptTooLarge`` when the prompt alone does not fit.
    """
    selection = start_selection(
        session, prompt, budget, count, history, variables=variables, notebook=notebook, pinned=pinned, instructions=instructions
    )
    return selection.finish(vectors, words, lexical_index=lexical_index, pin_first_exchange=pin_first_exchange, recent_share=recent_share)


def start_selection(
    session: dict[str, Any] | None,
    prompt: str,
    budget: int,
    count: Callable[[str], int],
    history: bool = True,
    *,
    variables: Sequence[VariableSummary] = (),
    notebook: NotebookContext | None = None,
    pinned: Collection[str] = (),
    instructions: str | None = None,
) -> Selection:
    """The first half of ``select_context``: the prompt, the notebook's parts and, if it fits, the whole conversation."""
    context = (session or {}).get("context") or {}
    earlier = conversation_messages(session, history)
    prompt_tokens = count(prompt) + MESSAGE_OVERHEAD
    # Reserve room for the system message as it would read if every earlier message were cut.
    reserve = _system_tokens(context, len(earlier), (), instructions, count)
    if prompt_tokens + reserve > budget:
        raise PromptTooLarge(
            f"The prompt needs about {prompt_tokens} tokens but the model's input budget is {budget - reserve}. "
            "Shorten it or use a model with a larger window."
        )
    turn = _Turn(earlier, count, budget - prompt_tokens - reserve)
    turn.add_notebook(prompt, variables, notebook)
    pinned_ids = set(pinned)
    fits = turn.add_everything(pinned_ids)
    return Selection(turn, fits, pinned_ids, prompt, prompt_tokens, context, instructions, budget)


@dataclass
class Selection:
    """A selection under way; ``fits`` says whether the whole conversation went in (nothing left to choose)."""

    turn: _Turn = field(repr=False)
    fits: bool
    pinned: set[str]
    prompt: str
    prompt_tokens: int
    context: dict[str, Any]
    instructions: str | None
    budget: int
    _recent_chosen: bool = False

    @property
    def earlier(self) -> list[dict[str, Any]]:
        """The messages chosen from (``conversation_messages``): a caller's index and vectors describe these."""
        return self.turn.earlier

    def choose_pinned_and_recent(
        self, lexical_index: LexicalIndex | None = None, pin_first_exchange: bool = True, recent_share: float = DEFAULT_RECENT_SHARE
    ) -> None:
        """When it did not fit: take the pinned messages, the first exchange and the recent ones.

        A step of its own so that a caller can compute the prompt's embedding meanwhile:
        only the relevance step (``finish``) needs it.
        """
        if self.fits or self._recent_chosen:
            return
        self._recent_chosen = True
        self.turn.kept_index = lexical_index
        self.turn.add_pinned(self.pinned, pin_first_exchange)
        self.turn.add_recent(recent_share)
        self.turn.word_scores  # noqa: B018 - scored now, while a caller's prompt embedding runs
        self.turn.asked  # noqa: B018 - found now, for the same reason

    def finish(self, vectors: Embeddings | None = None, words: WordTable | None = None, **recent: Any) -> ContextPlan:
        """Choose the rest by relevance (when it did not fit) and return the plan.

        ``recent`` takes ``choose_pinned_and_recent``'s arguments, when that step was not
        taken before.
        """
        if not self.fits:
            self.choose_pinned_and_recent(**recent)
            self.turn.add_relevant(vectors, words)
            self.turn.settle_partial()
            self.turn.add_fill()
        return self.turn.plan(self.prompt, self.prompt_tokens, self.context, self.instructions, self.budget)


def conversation_messages(session: dict[str, Any] | None, history: bool = True) -> list[dict[str, Any]]:
    """The messages the selector chooses from: user and assistant messages with text, in order.

    Failed turns are left out: the ``FAILED`` answers (our error lines, not the model's
    words) and a prompt that got no other answer. A failed prompt that a retry answered
    later is kept once, with that answer. Both are recognised by what follows them, so
    the list still only grows at its end, as the callers' caches of it (a
    ``LexicalIndex``, vectors) expect.
    """
    if not history:
        return []
    messages = [m for m in (session or {}).get("messages", []) if m.get("role") in _CONVERSATION_ROLES and m.get("content")]
    if FAILED not in map(dict.get, messages, repeat("status")):  # the common session, checked at C speed
        return messages
    failed = [position for position, message in enumerate(messages) if message.get("status") == FAILED]
    left_out = set(failed)
    for position in failed:
        prompt = position - 1
        while prompt >= 0 and messages[prompt]["role"] == "assistant":
            prompt -= 1
        if prompt >= 0 and messages[prompt]["role"] == "user" and _only_failures_answer(messages, prompt):
            left_out.add(prompt)
    return [message for position, message in enumerate(messages) if position not in left_out]


def _only_failures_answer(messages: list[dict[str, Any]], prompt: int) -> bool:
    """Whether every answer after the user message at ``prompt`` (up to the next one) is a ``FAILED`` one."""
    for message in islice(messages, prompt + 1, None):
        if message["role"] == "user":
            return True
        if message.get("status") != FAILED:
            return False
    return True


def failed_exchange(session: dict[str, Any] | None) -> int | None:
    """Where the session's last exchange starts (its user message), when that exchange ended in a failure.

    A turn that raised ``ModelError`` ends with a ``FAILED`` answer, or with the partial
    answer that arrived (status ``error``); retrying it means asking that prompt again
    without what followed it. None when the last exchange did not fail.
    """
    messages = (session or {}).get("messages") or []
    if not messages or messages[-1].get("role") != "assistant" or messages[-1].get("status") not in _FAILURES:
        return None
    for position in range(len(messages) - 2, -1, -1):
        role = messages[position].get("role")
        if role == "user":
            return position
        if role != "assistant":
            return None
    return None


def _tools_used(calls: Any) -> str | None:
    """One line on what the model looked at for an answer (its tools' summaries), never their results.

    A result went to the model once, for that answer; sent again with every later turn,
    a few hundred rows looked at twenty turns ago would crowd out the conversation.
    """
    if not isinstance(calls, list) or not calls:
        return None
    summaries = [str(call.get("summary") or call.get("name")) for call in calls[:TOOLS_NOTED] if isinstance(call, dict)]
    more = f" and {len(calls) - TOOLS_NOTED} more" if len(calls) > TOOLS_NOTED else ""
    return "[tools used for this answer: " + "; ".join(summaries) + more + "]"


def _images_sent(entries: Any) -> str | None:
    """One line per image a message carried, named instead of sent again: "[image sent earlier: figure from cell 5]".

    An image goes to the model with the prompt it was attached to, once; a later turn
    that sent it again would pay its tokens on every turn, for a figure the answer
    already describes.
    """
    if not isinstance(entries, list) or not entries:
        return None
    labels = [str(entry.get("label") or "an image") for entry in entries if isinstance(entry, Mapping)]
    return "\n".join(f"[image sent earlier: {label}]" for label in labels) or None


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


def _system_tokens(
    context: dict[str, Any], omitted: int, sections: Sequence[str], instructions: str | None, count: Callable[[str], int]
) -> int:
    text = system_text(context, omitted, sections, instructions)
    return count(text) + MESSAGE_OVERHEAD if text else 0


@dataclass(slots=True)
class _Choice:
    reason: str
    text: str
    tokens: int
    score: float | None = None
    note: str = ""
    cut: bool = False  # sent in part: the record says so (``context.record``)
    dated: str = ""  # the day's mark that ``text`` starts with (``_Turn.date_days``)


def _day(message: Mapping[str, Any]) -> str:
    """The day a message was written, as "8 May 2023" (UTC; "" when it has no readable timestamp)."""
    return _day_of(str(message.get("timestamp") or ""))


def _day_mark(day: str) -> str:
    """What ``_Turn.date_days`` puts before the first chosen message of ``day``."""
    return f"[{day}] "


@functools.lru_cache(maxsize=4096)  # every turn asks again for the same messages' days
def _day_of(stamp: str) -> str:
    try:
        when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return ""
    return f"{when.day} {when:%B %Y}"


class _DayMarks:
    """What the day's mark costs a message chosen by relevance: ``_Turn.date_days`` marks each day's first once.

    Counted as the passages are chosen, so that the room they fill is the room left
    after the marks (no mark when the conversation is of one day, as ``date_days`` does).
    """

    def __init__(self, turn: _Turn) -> None:
        self.turn = turn
        self.seen: set[str] = set()

    def cost(self, position: int) -> int:
        day = _day(self.turn.earlier[position])
        if not (self.turn.several_days and day) or day in self.seen:
            return 0
        return self.turn.count(_day_mark(day).rstrip())  # its space joins the text's first word

    def add(self, position: int) -> None:
        self.seen.add(_day(self.turn.earlier[position]))


@dataclass
class _Section:
    item: PlanItem
    text: str


class _Turn:
    """The working state of one selection: what is chosen so far and the room left."""

    def __init__(self, earlier: list[dict[str, Any]], count: Callable[[str], int], room: int) -> None:
        self.earlier = earlier
        self.kept_index: LexicalIndex | None = None  # a caller's index of ``earlier``, used if it is current
        self.count = count
        self.room = room
        self.chosen: dict[int, _Choice] = {}
        self.sections: list[_Section] = []
        self.dropped: list[str] = []
        self.warnings: list[str] = []
        self.notes: list[str] = []
        self.included_variables: list[VariableSummary] = []
        self._tokens: dict[int, int] = {}
        self.terms: dict[str, float] = {}
        self.prompt = ""
        self.days: list[tuple[int, int]] = []  # the days the prompt names by date
        self.partial: dict[int, dict[int, float]] = {}  # position -> {passage: relevance} chosen from it

    # -- helpers -------------------------------------------------------------------

    @cached_property
    def index(self) -> LexicalIndex:
        """The passages and word statistics of ``earlier``; built only when there is a choice to make."""
        kept = self.kept_index
        return kept if kept is not None and kept.describes(self.earlier) else LexicalIndex(self.earlier)

    @cached_property
    def several_days(self) -> bool:
        """Whether the messages chosen from span more than one day: only then are days marked (``date_days``)."""
        return bool(self.earlier) and _day(self.earlier[0]) != _day(self.earlier[-1])

    @cached_property
    def word_scores(self) -> dict[int, float]:
        """BM25 scores of the passages that share a word with the prompt."""
        return self.index.scores(self.terms)

    @cached_property
    def starts(self) -> list[int]:
        """Exchanges: a user message and the answers after it; ``starts[k]`` is where exchange k begins."""
        return self.index.starts

    def text(self, position: int) -> str:
        message = self.earlier[position]
        if not message.get("status") and not message.get("tools") and not message.get("attachments"):
            return message["content"]  # most messages: nothing to mark
        marks = [_images_sent(message.get("attachments")), _STATUS_MARKS.get(message.get("status") or ""), _tools_used(message.get("tools"))]
        return "\n\n".join([message["content"], *filter(None, marks)])

    def tokens(self, position: int) -> int:
        tokens = self._tokens.get(position)
        if tokens is None:
            tokens = self._tokens[position] = self.count(self.text(position)) + MESSAGE_OVERHEAD
        return tokens

    def exchange(self, number: int) -> range:
        end = self.starts[number + 1] if number + 1 < len(self.starts) else len(self.earlier)
        return range(self.starts[number], end)

    @cached_property
    def asked(self) -> set[int]:
        """The passages that are questions the user already put to the model: no evidence of their own.

        A past question that resembles the new one tells the model nothing the new one
        does not; what it learned is in the answer, which brings its question along
        (``partner``). Statements in a prompt (data, an error, a decision) still count.
        These passages are left out of the ranking itself, not only skipped: ranked,
        they would take the top ranks of both signals and, as the best, set the scale
        every other passage's relevance is measured against. On the LoCoMo dev
        conversations asked in turn (each question leaving its exchange), earlier
        questions took a fifth of the room at 2,000 tokens; leaving them out took the
        evidence sent from 73.4/82.4/89.4% to 79.1/86.0/91.8% at 1,000/2,000/4,000
        tokens with embeddings, and from 70.5/77.9/82.3% to 71.7/79.2/84.2% by words
        alone (skipping them only after ranking gave 77.5/84.1/91.2%).
        The index lists them as it grows (``LexicalIndex.answered``): finding them here
        meant going through every earlier message in each turn (measured: see README's
        "Speed").
        """
        return set(self.index.answered)  # a copy: the session's index may grow under another turn meanwhile

    def partner(self, position: int) -> int | None:
        """The question of an answer, or the first answer of a question."""
        role = self.earlier[position]["role"]
        if role == "assistant" and position > 0:
            return position - 1
        if role == "user" and position + 1 < len(self.earlier) and self.earlier[position + 1]["role"] == "assistant":
            return position + 1
        return None

    def take(self, position: int, reason: str, limit: int | None = None, score: float | None = None) -> bool:
        """Choose a message whole if it fits ``limit`` (default: the room), else cut to fit; False if neither."""
        if position in self.chosen:
            return False
        limit = self.room if limit is None else min(limit, self.room)
        tokens = self.tokens(position)
        if tokens <= limit:
            self.chosen[position] = _Choice(reason, self.text(position), tokens, score)
            self.room -= tokens
            return True
        if limit < MIN_PIECE + MESSAGE_OVERHEAD:
            return False
        return self.take_cut(position, reason, limit, score)

    def take_cut(self, position: int, reason: str, limit: int, score: float | None) -> bool:
        text = self.text(position)
        allowance = limit - MESSAGE_OVERHEAD
        if self.terms:
            cut = cut_to_relevant(text, self.terms, allowance, self.count, self.index.idf)
        else:
            cut = truncate_to_tokens(text, allowance, self.count)
        if not cut.strip():
            return False
        tokens = self.count(cut) + MESSAGE_OVERHEAD
        if tokens > limit:
            return False
        self.chosen[position] = _Choice(reason, cut, tokens, score, note="cut to its relevant part " + ELLIPSIS, cut=True)
        self.room -= tokens
        return True

    # -- the phases ----------------------------------------------------------------

    def add_notebook(self, prompt: str, variables: Sequence[VariableSummary], notebook: NotebookContext | None) -> None:
        """Variables, the last error and the last cells, within ``NOTEBOOK_SHARE`` of the room."""
        allowance = int(self.room * NOTEBOOK_SHARE)
        parts: list[tuple[PlanItem, str, VariableSummary | None]] = []
        for summary in variables:
            if summary.warning:
                self.warnings.append(summary.warning)
            if summary.excluded:
                self.dropped.append(f"variable `{summary.name}` not sent")
                continue
            parts.append((PlanItem("system", "variable", 0, label=f"`{summary.name}`", in_system=True), summary.text, summary))
        if notebook is not None:
            asked = bool(_ASKS_ABOUT_NOTEBOOK.search(prompt))
            if notebook.error and (asked or notebook.force_error):
                text = truncate_to_tokens(notebook.error, notebook.error_cap_tokens, self.count)
                parts.append((PlanItem("system", "error", 0, label="last error", in_system=True), "Last error:\n" + text, None))
            shown = notebook.force_cells or (len(notebook.cells) if asked else 0)
            cells = list(notebook.cells)[-shown:] if shown else []
            for back, source in enumerate(cells):
                label = f"cell -{len(cells) - back}"
                text = truncate_to_tokens(source, notebook.cell_cap_tokens, self.count)
                source_text = f"Executed cell ({label}):\n```python\n{text}\n```"
                parts.append((PlanItem("system", "cells", 0, label=label, in_system=True), source_text, None))
        for item, text, summary in parts:
            tokens = self.count(text) + 2  # the blank line between sections
            if tokens > allowance:
                self.dropped.append(f"{item.label} left out: no room ({tokens} tokens)")
                continue
            allowance -= tokens
            self.room -= tokens
            self.sections.append(_Section(PlanItem(item.role, item.reason, tokens, label=item.label, in_system=True), text))
            if summary is not None:
                self.included_variables.append(summary)
        self.prompt = prompt
        self.terms = query_terms(prompt, [v.name for v in self.included_variables])
        self.days = named_days(prompt)

    def add_everything(self, pinned: set[str]) -> bool:
        """Take the whole conversation when it fits: then there is nothing to choose, and nothing is cut.

        This is the common turn, so it measures each message once and chooses them
        directly rather than through ``take``, which would check and measure again.
        """
        measured: list[tuple[int, str, int]] = []
        total = 0
        for position in reversed(range(len(self.earlier))):  # newest first: recency reuses these counts
            text = self.text(position)
            tokens = self._tokens[position] = self.count(text) + MESSAGE_OVERHEAD
            total += tokens
            if total > self.room:  # stop early: a long session is far over any window
                return False
            measured.append((position, text, tokens))
        for position, text, tokens in reversed(measured):
            reason = "pinned" if pinned and self.earlier[position].get("id") in pinned else "recent"
            self.chosen[position] = _Choice(reason, text, tokens)
        self.room -= total
        return True

    def add_pinned(self, pinned: set[str], pin_first_exchange: bool) -> None:
        if pinned:
            for position, message in enumerate(self.earlier):
                if message.get("id") in pinned:
                    self.take(position, "pinned")
        if pin_first_exchange and self.starts:
            limit = int(self.room * FIRST_EXCHANGE_SHARE)
            for position in self.exchange(0):
                before = self.room
                if self.take(position, "pinned", limit=limit):
                    limit -= before - self.room

    def add_recent(self, recent_share: float) -> None:
        """The last two exchanges as far as they fit, then more up to ``recent_share`` of the room."""
        exchanges = len(self.starts)
        for number in range(exchanges - 1, max(exchanges - 3, -1), -1):
            positions = [p for p in self.exchange(number) if p not in self.chosen]
            if sum(self.tokens(p) for p in positions) <= self.room:
                for position in positions:
                    self.take(position, "recent")
            else:
                for position in reversed(positions):  # the newest part of the exchange matters most
                    self.take(position, "recent")
        share = int(self.room * max(0.0, min(1.0, recent_share)))
        for number in range(exchanges - 3, -1, -1):
            positions = [p for p in self.exchange(number) if p not in self.chosen]
            cost = sum(self.tokens(p) for p in positions)
            if cost > share:
                break
            for position in positions:
                self.take(position, "recent")
            share -= cost

    def add_relevant(self, vectors: Embeddings | None, word_table: WordTable | None = None) -> None:
        """Passages of older messages by relevance to the prompt, the most relevant first.

        A message shows the passages chosen from it, the rest replaced by ``[…]``; a
        passage already sent (a repeated sentence) is not sent twice; a short partner
        (the question of a chosen answer, or the reverse) comes along whole.
        """
        if not self.earlier:
            return
        index = self.index
        message_vectors, prompt_vector = vectors if vectors is not None else (None, None)
        similarities = semantic_scores(prompt_vector, message_vectors, index)
        missing = unknown_count(similarities) if similarities is not None else 0
        if similarities is None:
            self.notes.append("Relevance judged by words only (BM25): no embeddings for this turn.")
        elif missing > len(index.texts) * (1.0 - MEANING_COVERAGE):
            self.notes.append(f"Relevance judged by words only (BM25): {missing} of {len(index.texts)} passages not embedded yet.")
            similarities = None
        else:
            self.notes.append(
                "Relevance judged by words (BM25) and meaning (embeddings)"
                + (f"; {missing} passage(s) not embedded yet, ranked by their words." if missing else ".")
            )
        scores = self.word_scores
        wider = word_table.widen(self.prompt, self.terms) if word_table is not None else {}
        if wider:  # BM25 adds up over terms: the neighbours' scores are added to the prompt's own
            added = {stem: weight for stem, (_, weight) in wider.items()}
            scores = dict(scores)
            for passage, score in index.scores(added).items():
                scores[passage] = scores.get(passage, 0.0) + score
            self.terms = {**self.terms, **added}
            self.notes.append("Also looked for, as close in meaning to the prompt's words: " + ", ".join(word for word, _ in wider.values()) + ".")
        asked = self.asked
        words = {c: v for c, v in scores.items() if c not in asked} if asked else scores
        if asked and similarities is not None:
            similarities = similarities.copy()
            similarities[list(asked)] = float("nan")
        fused = dated(spread(fuse(words, similarities, len(index.texts), RELEVANCE_FLOOR), index), index, self.days)
        self.take_passages(best_passages(fused, CANDIDATES, RELEVANCE_FLOOR), fused.tolist())  # a list: indexing an array makes an object per read

    def take_passages(self, candidates: Sequence[int], relevance: Sequence[float]) -> None:
        """Choose ``candidates`` best first while they fit, each measured as it will be sent.

        A passage costs its text, the ``[…]`` it adds to its message or saves (it may
        close a gap), and for a message's first passage the message's own tokens and
        its day's mark (``date_days``). Measured so, the passages fill the room that is
        really left: a fixed allowance per passage left a twentieth of a 2,000-token
        window unused on LoCoMo, and too small a one got the plan trimmed afterwards.
        """
        index, asked = self.index, self.asked
        texts, owners, chosen, partial, count = index.texts, index.owners, self.chosen, self.partial, self.count
        sent = {_normal(texts[c]) for p in chosen for c in range(*index.spans[p])}
        ellipsis, days = count(ELLIPSIS), _DayMarks(self)
        for position in chosen:  # the pinned and recent messages' marks
            self.room -= days.cost(position)
            days.add(position)
        for passage in candidates:  # best first: ranked by value per token instead, 0.6 points fewer on LoCoMo
            if self.room < MIN_PIECE:
                break
            position = owners[passage]
            if position in chosen or passage in asked:
                continue
            key = _normal(texts[passage])
            if key in sent:
                continue
            first, end = index.spans[position]
            kept = partial.get(position)
            gap_before = passage > first and (not kept or passage - 1 not in kept)  # a "[…]" will stand just before it
            gap_after = passage < end - 1 and (not kept or passage + 1 not in kept)
            # The gap it sat in had one "[…]" (a message not sent yet, none): it leaves two, one or none.
            markers = gap_before + gap_after - (1 if kept else 0)
            extra = count(texts[passage]) + ellipsis * markers + (0 if kept else MESSAGE_OVERHEAD + days.cost(position))
            if extra > self.room:
                continue
            score = relevance[passage]
            if not kept:
                kept = partial[position] = {}
                days.add(position)
            kept[passage] = score
            self.room -= extra
            sent.add(key)
            if score >= NEIGHBOUR_RELEVANCE:
                partner = self.partner(position)
                if partner is not None and partner not in chosen and partner not in partial and self.tokens(partner) <= NEIGHBOUR_WHOLE:
                    # With its passage's relevance: if the plan must shed, it goes with that passage, not first.
                    if self.take(partner, "neighbour", limit=self.tokens(partner), score=score):
                        chosen[partner].note = f"with {self.earlier[position].get('id')}'s passage, at its relevance"

    def settle_partial(self) -> None:
        """Turn the passages chosen per message into the text sent for it."""
        index = self.index
        for position, kept in self.partial.items():
            first, end = index.spans[position]
            if len(kept) == end - first:  # every passage: the message whole, measured already
                self.chosen[position] = _Choice("relevant", self.text(position), self.tokens(position), max(kept.values()))
                continue
            text = join_passages(index.texts[first:end], {passage - first for passage in kept})
            note = f"{len(kept)} of {end - first} passages " + ELLIPSIS
            self.chosen[position] = _Choice("relevant", text, self.count(text) + MESSAGE_OVERHEAD, max(kept.values()), note, cut=True)
        self.partial = {}

    def add_fill(self) -> None:
        """Room that relevance left unused: the newest remaining exchanges that fit whole, as recency would."""
        for number in range(len(self.starts) - 1, -1, -1):
            positions = [p for p in self.exchange(number) if p not in self.chosen]
            if sum(self.tokens(p) for p in positions) > self.room:
                break
            for position in positions:
                self.take(position, "fill")

    # -- the result ----------------------------------------------------------------

    def date_days(self) -> None:
        """Mark the first chosen message of each day with that day, when the conversation spans several.

        Messages chosen from different days sit side by side, and "last week" or "when
        did I..." need their dates: each day's mark costs a few tokens once, not one per
        message. Marks are placed afresh whenever the choice changes. A conversation sent
        whole is sent as it is: it was measured to fit without them.
        """
        if len(self.chosen) == len(self.earlier) or not self.several_days:
            return
        previous = None
        for position in sorted(self.chosen):
            choice = self.chosen[position]
            day = _day(self.earlier[position])
            text = choice.text.removeprefix(choice.dated)
            mark = _day_mark(day) if day and day != previous else ""
            if mark != choice.dated:
                choice.text, choice.dated = mark + text, mark
                choice.tokens = self.count(choice.text) + MESSAGE_OVERHEAD
            previous = day or previous

    def plan(self, prompt: str, prompt_tokens: int, context: dict[str, Any], instructions: str | None, budget: int) -> ContextPlan:
        sections = [section.text for section in self.sections]
        while True:
            omitted = len(self.earlier) - len(self.chosen)
            system = system_text(context, omitted, sections, instructions)
            system_tokens = self.count(system) + MESSAGE_OVERHEAD if system else 0
            self.date_days()
            total = system_tokens + prompt_tokens + sum(choice.tokens for choice in self.chosen.values())
            if total <= budget or not (self.chosen or sections):
                break
            # Token counts of joined texts are not exactly the sum of their parts: drop the least valuable piece.
            if self.chosen:
                victim = max(self.chosen, key=lambda p: (_PRIORITY.get(self.chosen[p].reason, 1), -(self.chosen[p].score or 0), -p))
                del self.chosen[victim]
            else:
                dropped = self.sections.pop()
                sections.pop()
                self.dropped.append(f"{dropped.item.label} left out: no room")
        chosen = sorted(self.chosen.items())
        messages = [{"role": "system", "content": system}] if system else []
        messages += [{"role": self.earlier[position]["role"], "content": choice.text} for position, choice in chosen]
        messages.append({"role": "user", "content": prompt})

        def items() -> list[PlanItem]:
            listed = []
            if system:
                listed.append(PlanItem("system", "system", system_tokens, text=system))
                listed += [replace(section.item, text=section.text) for section in self.sections]
            for position, choice in chosen:
                message = self.earlier[position]
                note = choice.note
                status = message.get("status")
                if status in _STATUS_MARKS:
                    note = f"{status} answer" + (f"; {note}" if note else "")
                reason = "recent" if choice.reason == "fill" else choice.reason
                listed.append(PlanItem(message["role"], reason, choice.tokens, message.get("id"), choice.score, note, text=choice.text, cut=choice.cut))
            listed.append(PlanItem("user", "prompt", prompt_tokens, text=prompt))
            return listed

        earlier, kept = self.earlier, self.chosen

        def omitted() -> list[str]:
            return [message.get("id") for position, message in enumerate(earlier) if position not in kept]

        return ContextPlan(
            messages=messages,
            list_items=items,
            budget=budget,
            list_omitted=omitted,
            dropped=self.dropped,
            warnings=self.warnings,
            notes=self.notes,
            variables=self.included_variables,
        )
