"""Read-only tools a model may call during a turn: the user's variables, DataFrame rows, cells, the conversation.

They run in the kernel beside the user's data and only read it. Each tool is a method of
``KernelTools`` declared with its schema on it (``registry``); the model's arguments are
checked against that schema before the method runs, and are data: a row filter is a list
of ``{column, op, value}`` conditions evaluated with pandas comparisons, never ``eval``,
``DataFrame.query`` or any other text run as code. Values are described by the one
describer (``describe``), as the prompt's summaries are. Every result fits ``cap_tokens``
and goes through the one redaction; secret-looking variables are withheld unless the
user named them, their string values are blanked in every result, and so are the values
under secret-looking keys and DataFrame columns. A tool never raises: a bad call comes
back as ``ok=False`` with a one-line message the model can act on. pandas and NumPy are
only touched when a value is one of theirs.

A model that can see may also be shown the images a cell displayed (``cell_images``):
the kernel picks them from its memory of displays, and the turn's ``show`` (given only
when the model can see) makes each one ready to send, so no byte of an image leaves
here for a model that cannot see it; a few a call and an answer, within the tokens the
turn has left.

Tools are bounded, and the model is told the limits in the schemas: conditions per
filter, calls per request (``MAX_CALLS``, which the gateway enforces), requests per turn.
Every conversion of a user object to text in a call shares one time limit
(``text.text_budget``); a filter reads a large frame a block of rows at a time, so its
memory stays that of a block, and stops at ``FILTER_SECONDS`` saying how far it got;
only built-in containers, pandas and NumPy objects are looked into.
"""

from __future__ import annotations

import difflib
import operator
import sys
import time
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..context.relevance import truncate_to_tokens
from ..errors import OblixError
from ..redaction import WITHHELD, is_secret_name, redact
from .describe import describe_fully, glance, sample_positions
from .images import memory_of
from .registry import ToolRefusal, ToolRegistry
from .state import format_error
from .text import TEXT_SECONDS, is_module, is_secret_label, is_type, label_text, markdown_table, text_budget, text_of, type_name
from .variables import approximate_tokens, is_hidden_name, secret_values

if TYPE_CHECKING:
    from .images import DisplayedImages, NotebookImage

# How an image is shown to the turn's model: its content part and the input tokens it costs.
# Given by the turn (which knows the model); raises an OblixError for an image it cannot send.
ShowImage = Callable[["NotebookImage"], tuple[dict[str, Any], int]]

DEFAULT_ROWS = 20
MAX_ROWS = 200
MAX_SEARCH_RESULTS = 20
MAX_CONDITIONS = 8
MAX_LISTED_VALUES = 100  # values of one `in` / `not in` condition
MAX_CALLS = 8  # tool calls the model may ask for in one request; the gateway runs no more
IMAGES_PER_CALL = 3  # images one cell_images call shows: a cell's few figures, not a gallery
IMAGES_PER_ANSWER = 6  # over a whole answer: each request sends every image shown before it again
FILTER_SECONDS = 3.0
FILTER_BLOCK = 524_288  # rows a filter evaluates at once: its masks' memory
OPERATORS = ("==", "!=", "<", "<=", ">", ">=", "in", "not in", "contains", "startswith", "isna", "notna")
_COMPARISONS = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_SHOWN_COLUMNS = 12
_CELL_WIDTH = 60
_SECRET_WITHHELD = "looks like a secret, so it is not shown; the user must name it (e.g. `--vars {name}`) to share it"
_COLUMN_WITHHELD = "Column `{label}` of `{name}` has a secret-looking name, so its values are withheld unless the user names `{name}`."

TOOLS = ToolRegistry()  # every tool a model may be offered, declared below on the method that answers it


@dataclass(frozen=True)
class ToolResult:
    """One tool call's outcome: ``text`` goes to the model, ``summary`` is the line the user sees, ``parts`` the images it shows."""

    text: str
    summary: str
    ok: bool
    parts: tuple[dict[str, Any], ...] = ()
    kept: dict[str, Any] | None = None  # more the answer's record of the call keeps (a run's ``RunRecord``)


@dataclass(frozen=True)
class CellHistory:
    """What IPython kept of earlier cells: sources (``In``), last-expression values (``Out``) and the last error.

    IPython does not keep printed output, so a cell without a value in ``Out`` is
    reported as having stored none. The images cells displayed are what the kernel's
    memory of them (``images.install``) still holds, when it was installed.
    """

    inputs: Sequence[str] = ()
    outputs: Mapping[int, Any] = field(default_factory=dict)
    error: str | None = None
    images: DisplayedImages | None = None

    @classmethod
    def from_shell(cls, shell: Any) -> CellHistory:
        namespace = getattr(shell, "user_ns", None) or {}
        error = getattr(sys, "last_value", None)
        error_text = format_error(error, getattr(sys, "last_traceback", None))
        return cls(namespace.get("In") or (), namespace.get("Out") or {}, error_text, memory_of(shell))

    @property
    def latest(self) -> int:
        """The number of the last cell run (``In[0]`` is IPython's empty placeholder)."""
        return len(self.inputs) - 1


def current_shell() -> Any:
    """The IPython shell this process runs, or None (outside IPython; IPython is never imported here)."""
    ipython = sys.modules.get("IPython")
    return ipython.get_ipython() if ipython is not None else None


_CONDITION = {
    "type": "object",
    "properties": {
        "column": {"type": "string", "description": "Column name."},
        "op": {"type": "string", "enum": list(OPERATORS)},
        "value": {
            "description": f"What to compare with: a string, number, boolean or null; a list (at most {MAX_LISTED_VALUES}) "
            "for `in`/`not in`; omitted for `isna`/`notna`. Strings are read as numbers or dates when the column holds them."
        },
    },
    "required": ["column", "op"],
    "additionalProperties": False,
}


class KernelTools:
    """The read-only tools offered to a model for one turn, over the user's ``namespace``.

    ``named`` are the variables the user named for this turn: secret-looking ones are
    shown only then, whole. ``hidden`` are the shell's own names (``user_ns_hidden``). The
    cell tools are offered only with ``cells``, the search tool only with ``search``
    (``search(query, limit)`` returns the best-matching passages of earlier messages).
    ``rounds`` is how many requests a turn may make, which the model is told. The image
    tool is offered only with ``show`` (the turn's model can see) and images remembered;
    the images of an answer may cost at most ``image_tokens``.
    """

    max_calls = MAX_CALLS  # for the gateway, which runs the calls
    sighted = frozenset({"cell_images"})  # for the gateway: tools offered only to a model that can see

    def __init__(
        self,
        namespace: Mapping[str, Any],
        named: Sequence[str] = (),
        *,
        hidden: Collection[str] = (),
        cells: CellHistory | None = None,
        search: Callable[[str, int], list[str]] | None = None,
        count: Callable[[str], int] = approximate_tokens,
        cap_tokens: int = 1500,
        rounds: int | None = None,
        show: ShowImage | None = None,
        image_tokens: int = 0,
    ) -> None:
        self.namespace = namespace
        self.named = frozenset(named)
        self.hidden = frozenset(hidden)
        self.cells = cells
        self.search = search
        self.count = count
        self.cap_tokens = cap_tokens
        self.rounds = rounds
        self.show = show
        self.image_tokens = image_tokens
        self._kept: list[str] = []  # this call's texts of variables the user named: sent as they are
        self._withheld: list[str] = []  # this call's secret values (``secret_values``), withheld from every text
        self._parts: list[dict[str, Any]] = []  # this call's images, as the model is shown them
        self._shown: list[int] = []  # the input tokens of each image this answer has shown

    @classmethod
    def from_shell(cls, shell: Any, named: Sequence[str] = (), **options: Any) -> KernelTools:
        """Tools over an IPython shell's variables, cells and last error."""
        hidden = getattr(shell, "user_ns_hidden", None) or ()
        return cls(shell.user_ns, named, hidden=hidden, cells=CellHistory.from_shell(shell), **options)

    def schemas(self) -> list[dict[str, Any]]:
        """The OpenAI ``tools`` list: one ``{"type": "function", "function": {...}}`` per tool offered."""
        return TOOLS.schemas(self)

    def run(self, name: str, arguments: str | Mapping[str, Any] | None) -> ToolResult:
        """Run tool ``name`` with the model's ``arguments`` (JSON text or a mapping); never raises."""
        items = dict(self._items())
        self._kept = [value for name, value in items.items() if self._reveals(name) and type(value) is str]
        self._withheld = secret_values(items, self.named)
        self._parts = []
        try:
            with warnings.catch_warnings(), text_budget(TEXT_SECONDS):  # pandas' and NumPy's warnings would print in the user's cell
                warnings.simplefilter("ignore")
                text, summary = TOOLS.call(self, name, arguments)
        except ToolRefusal as refusal:
            return self._result(str(refusal), f"{name} failed: {refusal}", ok=False)
        except Exception as error:  # noqa: BLE001 - the user's objects and pandas can fail in ways no check foresees
            reason = (str(error).strip().splitlines() or [""])[0][:200]
            message = f"{name} failed: {type(error).__name__}" + (f": {reason}" if reason else "")
            return self._result(message, message, ok=False)
        return self._result(text, summary, ok=True)

    def _result(self, text: str, summary: str, ok: bool) -> ToolResult:
        text, summary = self._redacted(text), self._redacted(summary)
        line = summary.replace("\n", " ")
        parts = tuple(self._parts) if ok else ()
        return ToolResult(_capped(text, self.cap_tokens, self.count), line if len(line) <= 160 else line[:159] + "…", ok, parts)

    def _redacted(self, text: str) -> str:
        """``text`` through the one redaction, and without the notebook's secret values (``secret_values``)."""
        return redact(text, self._kept, self._withheld)

    def recorded(self, name: str, arguments: str | Mapping[str, Any] | None, text: str) -> str:
        """The result ``text`` of a call as a stored record may keep it: what the call gives when no secret is named.

        A session is read later, and by the colleagues it is shared with: what the user sent
        on purpose for one turn is not kept in it. Only a call made while a secret-looking
        variable was named is run again (tools only read, so it gives the same answer).
        """
        if name in self.sighted or not any(is_secret_name(named) for named in self.named):  # an image tool names images, never a value
            return text
        if name not in {tool.name for tool in TOOLS}:  # not one of these read-only tools (a run, which is never made again)
            return text
        unnamed = [named for named in self.named if not is_secret_name(named)]
        again = KernelTools(
            self.namespace, unnamed, hidden=self.hidden, cells=self.cells, search=self.search, count=self.count, cap_tokens=self.cap_tokens
        )
        return again.run(name, arguments).text

    def _reveals(self, name: str) -> bool:
        """Whether variable ``name`` is sent whole: a secret-looking name the user named."""
        return name in self.named and is_secret_name(name)

    def _keep(self, text: str) -> str:
        """``text``, made of a variable the user named, marked to pass the redaction as it is."""
        self._kept.append(text)
        return text

    # -- the namespace ---------------------------------------------------------------------

    def _items(self) -> list[tuple[str, Any]]:
        for _ in range(3):  # the kernel may be adding names on another thread
            try:
                return list(self.namespace.items())
            except RuntimeError:
                continue
        return []

    def _visible(self, name: str, value: Any) -> bool:
        if name in self.named:
            return True
        return not (is_hidden_name(name) or name in self.hidden or is_module(value))

    def _value(self, name: str) -> Any:
        """The user's variable ``name``, refusing unknown, hidden and unnamed secret-looking ones."""
        if name not in self.namespace or not self._visible(name, self.namespace[name]):
            known = [known for known, value in self._items() if self._visible(known, value)]
            close = difflib.get_close_matches(name, known, n=3)
            hint = f" Did you mean {', '.join(f'`{c}`' for c in close)}?" if close else " list_variables shows them."
            raise ToolRefusal(f"No variable `{name}` in the notebook.{hint}")
        if is_secret_name(name) and name not in self.named:
            raise ToolRefusal(f"`{name}` " + _SECRET_WITHHELD.format(name=name) + ".")
        return self.namespace[name]

    def _frame(self, name: str) -> Any:
        """Variable ``name`` as a DataFrame (a Series as its one column), refusing any other value."""
        value = self._value(name)
        if is_type(value, "pandas", "Series"):
            return value.to_frame(name=value.name if value.name is not None else name)
        if not is_type(value, "pandas", "DataFrame"):
            raise ToolRefusal(f"`{name}` is a {type_name(value)}, not a DataFrame; describe_variable describes it.")
        return value

    def _readable_column(self, frame: Any, column: str, name: str, about: str = "") -> Any:
        """The real label of ``column`` in ``frame``, refused when its name looks secret: no oracle on a secret column's values."""
        label = _column(frame, column, name)
        if not self._reveals(name) and is_secret_label(label):
            raise ToolRefusal(about + _COLUMN_WITHHELD.format(label=label_text(label), name=name))
        return label

    # -- the tools, in the order the model is offered them --------------------------------

    @TOOLS.tool(
        "list_variables",
        lambda tools: "List the user's notebook variables: name, type, shape or length, one-line summary." + tools._limits(),
        properties={},
    )
    def _list_variables(self) -> tuple[str, str]:
        lines = []
        for name, value in self._items():
            if not self._visible(name, value):
                continue
            if is_secret_name(name) and name not in self.named:
                lines.append(f"- `{name}`: {type_name(value)} (looks like a secret, so its value is withheld unless the user names it)")
            elif self._reveals(name):
                lines.append("- " + self._keep(glance(name, value, self.count, reveal=True)))
            else:
                lines.append("- " + glance(name, value, self.count))
        if not lines:
            return "The notebook has no variables yet.", "listed the notebook's variables: none"
        text, _ = _fitted([f"The notebook's variables ({len(lines)}):"], lines, [], self.cap_tokens, self.count, "variables")
        return text, f"listed the notebook's {len(lines)} variables"

    def _limits(self) -> str:
        rounds = f", {self.rounds} requests a turn (the last without tools)" if self.rounds else ""
        return f" Limits: {MAX_CALLS} tool calls a request{rounds}. Secrets show as {WITHHELD}."

    @TOOLS.tool(
        "describe_variable",
        "Describe one variable. DataFrame/Series: dtypes, missing values per column, describe(), and the value "
        "counts of `column` if given. Arrays: shape, dtype, min/max/mean/std. Containers: length, keys, a sample.",
        properties={
            "name": {"type": "string", "description": "The variable's name."},
            "column": {"type": "string", "description": "DataFrame column whose value counts to show."},
        },
        required=["name"],
    )
    def _describe_variable(self, name: str, column: str | None = None) -> tuple[str, str]:
        value = self._value(name)
        reveal = self._reveals(name)
        label = None
        if column is not None:
            if not is_type(value, "pandas", "DataFrame", "Series"):
                raise ToolRefusal(f"`column` applies to DataFrames and Series; `{name}` is a {type_name(value)}.")
            label = self._readable_column(self._frame(name), column, name)
        text = describe_fully(name, value, preview=self.cap_tokens * 4, reveal=reveal, counts_of=label)
        text = self._keep(text) if reveal else text
        return text, f"looked at `{name}`" + (f", value counts of `{column}`" if column is not None else "")

    @TOOLS.tool(
        "dataframe_rows",
        "Rows of a DataFrame (or Series), optionally only those matching conditions, with the total number "
        "matching. Nothing is evaluated as code: conditions are structured comparisons.",
        properties={
            "name": {"type": "string", "description": "The DataFrame's variable name."},
            "mode": {"type": "string", "enum": ["head", "tail", "sample"], "description": "Which matching rows to show; sample is seeded."},
            "where": {
                "type": "array",
                "items": _CONDITION,
                "maxItems": MAX_CONDITIONS,
                "description": f"Conditions rows must meet (at most {MAX_CONDITIONS}).",
            },
            "combine": {"type": "string", "enum": ["and", "or"], "description": "How conditions combine (default and)."},
            "columns": {"type": "array", "items": {"type": "string"}, "description": f"Columns to show (default the first {_SHOWN_COLUMNS})."},
            "limit": {"type": "integer", "minimum": 1, "maximum": MAX_ROWS, "description": f"Rows to show (default {DEFAULT_ROWS})."},
            "seed": {"type": "integer", "description": "Seed for mode sample (default 0)."},
        },
        required=["name"],
    )
    def _dataframe_rows(
        self,
        name: str,
        mode: str = "head",
        where: Sequence[Mapping[str, Any]] = (),
        combine: str = "and",
        columns: Sequence[str] | None = None,
        limit: int = DEFAULT_ROWS,
        seed: int = 0,
    ) -> tuple[str, str]:
        frame = self._frame(name)
        reveal = self._reveals(name)
        limit = max(1, min(limit, MAX_ROWS))
        if len(where) > MAX_CONDITIONS:
            raise ToolRefusal(f"At most {MAX_CONDITIONS} conditions per call; got {len(where)}. Narrow the question, or make several calls.")
        for number, condition in enumerate(where):
            self._readable_column(frame, condition["column"], name, about=f"where[{number}]: ")
        labels = [_column(frame, c, name) for c in columns] if columns else list(frame.columns[:_SHOWN_COLUMNS])
        found = _Matches(frame, where, combine, name) if where else None
        total = len(frame) if found is None else found.total
        positions = _picked(mode, total, limit, seed)
        positions = positions if found is None else found.positions(positions)
        shown = frame.iloc[positions][labels].astype(object)
        condition = f" {combine} ".join(_condition_text(c) for c in where)
        which = {"head": "the first", "tail": "the last", "sample": f"a random sample (seed {seed}) of"}[mode]
        if found is not None and found.searched < len(frame):
            matched = (
                f"`{name}`: rows where {condition}: {total:,} match in the first {found.searched:,} of {len(frame):,} rows "
                f"(the search stops after {FILTER_SECONDS:g} s; narrow the filter to search further)"
            )
        elif where:
            matched = f"`{name}`: rows where {condition}: {total:,} of {len(frame):,} rows match"
        else:
            matched = f"`{name}`: {total:,} rows"
        head = [matched + (f"; {which} {len(positions):,} shown." if total else ".")]
        if not columns and len(frame.columns) > len(labels):
            head.append(f"Showing {len(labels)} of {len(frame.columns):,} columns; pass `columns` to choose others.")
        table = markdown_table(labels, shown.index, shown.values.tolist(), _CELL_WIDTH, reveal=reveal).splitlines() if total else []
        tail = [f"[… {total - len(positions):,} more matching rows not shown: raise `limit` (max {MAX_ROWS}) or narrow the filter]"]
        text, fitted = _fitted(head + table[:2], table[2:], tail if total > len(positions) else [], self.cap_tokens, self.count, "rows")
        subject = f"rows where {condition}" if where else f"{mode} rows"
        return self._keep(text) if reveal else text, f"looked at `{name}`: {subject}, {fitted:,} of {total:,} shown"

    @TOOLS.tool(
        "search_conversation",
        "Search the earlier messages of this conversation for passages about `query`.",
        properties={
            "query": {"type": "string", "description": "What to look for."},
            "limit": {"type": "integer", "minimum": 1, "maximum": MAX_SEARCH_RESULTS, "description": "Passages to return (default 5)."},
        },
        required=["query"],
        offered_when=lambda tools: tools.search is not None,
    )
    def _search_conversation(self, query: str, limit: int = 5) -> tuple[str, str]:
        found = self.search(query, max(1, min(limit, MAX_SEARCH_RESULTS)))
        if not found:
            return f"No earlier message matches {query!r}.", f"searched the conversation for {query!r}: nothing found"
        blocks = [f"[{n}] {passage}" for n, passage in enumerate(found, 1)]
        text, _ = _fitted([f"{len(found)} passages of earlier messages matching {query!r}:"], blocks, [], self.cap_tokens, self.count, "passages")
        return text, f"searched the conversation for {query!r}: {len(found)} passages"

    @TOOLS.tool(
        "notebook_cell",
        lambda tools: "The source of notebook cell `number` (In[number]), the value it returned (Out[number]) "
        f"and the images it displayed ({'named; cell_images shows them' if tools._can_show() else 'named, not shown'}). " + tools._cells_run(),
        properties={"number": {"type": "integer", "description": "The cell's execution count."}},
        required=["number"],
        offered_when=lambda tools: tools.cells is not None,
    )
    def _notebook_cell(self, number: int) -> tuple[str, str]:
        latest = self.cells.latest
        if not 1 <= number <= latest:
            raise ToolRefusal(f"No cell {number}: cells run so far are numbered 1-{latest}." if latest >= 1 else "No cell has run yet.")
        parts = [f"In [{number}]:", f"```python\n{self.cells.inputs[number]}\n```"]
        if number not in self.cells.outputs:
            parts.append(f"Cell {number} stored no output (IPython keeps only the value of a cell's last expression, not printed text).")
        else:
            output = self.cells.outputs[number]
            holders = [n for n, v in self._items() if v is output and is_secret_name(n)]
            secret = next((n for n in holders if n not in self.named), None)
            if secret is not None:
                parts.append(f"Out[{number}]: withheld: it is `{secret}`, which " + _SECRET_WITHHELD.format(name=secret) + ".")
            else:
                reveal = any(self._reveals(n) for n in holders)
                shown = text_of(output, self.cap_tokens * 4, reveal=reveal) or f"<{type_name(output)}: its repr failed or took too long>"
                parts.append(f"Out[{number}]:\n{self._keep(shown) if reveal else shown}")
        displayed = self.cells.images.images_of(number) if self.cells.images is not None else []
        if displayed:
            parts.append(f"Images cell {number} displayed ({len(displayed)}):")
            parts += [f"- {image.summary()}" for image in displayed]
        return "\n".join(parts), f"read cell {number}"

    def _cells_run(self) -> str:
        latest = self.cells.latest
        return f"Cells run so far are numbered 1-{latest}." if latest >= 1 else "No cell has run yet."

    def _can_show(self) -> bool:
        """Whether the image tool is offered: the model can see, and the kernel still keeps some image's bytes."""
        return self.show is not None and self.cells is not None and self.cells.images is not None and self.cells.images.last_cell() is not None

    @TOOLS.tool(
        "cell_images",
        lambda tools: "See the images notebook cell `number` displayed (notebook_cell names them), shrunk to be sent. "
        f"At most {IMAGES_PER_CALL} a call and {IMAGES_PER_ANSWER} an answer. " + tools._cells_run(),
        properties={
            "number": {"type": "integer", "description": "The cell's execution count."},
            "which": {
                "type": "array",
                "items": {"type": "integer"},
                "maxItems": IMAGES_PER_CALL,
                "description": "Which of the cell's images, counting from 1 in the order notebook_cell lists them (default: the first ones).",
            },
        },
        required=["number"],
        offered_when=lambda tools: tools._can_show(),
    )
    def _cell_images(self, number: int, which: Sequence[int] | None = None) -> tuple[str, str]:
        displayed = self.cells.images.images_of(number)
        if not displayed:
            raise ToolRefusal(f"Cell {number} displayed no image that is still remembered; notebook_cell names a cell's images.")
        if which:
            unknown = [position for position in which if not 1 <= position <= len(displayed)]
            if unknown:
                raise ToolRefusal(f"Cell {number} displayed {len(displayed)} image(s): `which` counts 1-{len(displayed)}; got {unknown[0]}.")
        wanted = [displayed[position - 1] for position in dict.fromkeys(which)] if which else displayed
        sent: list[str] = []
        unsent: list[str] = []
        for image in wanted:
            why_not = self._show(image, len(sent))
            if why_not is None:
                sent.append(image.label)
            else:
                unsent.append(why_not)
        images = f"{len(sent)} image{'s' if len(sent) != 1 else ''} of cell {number}"
        lines = [f"{images} follow{'s' if len(sent) == 1 else ''}: {', '.join(sent)}." if sent else f"No image of cell {number} was sent."]
        if unsent:
            lines.append("Not sent: " + "; ".join(unsent) + ".")
        return "\n".join(lines), f"looked at {images}"

    def show_images(self, images: Sequence[NotebookImage]) -> list[dict[str, Any]]:
        """The parts that show ``images`` (a run's) to the model, within this answer's image limits; none without a model that sees."""
        if self.show is None:
            return []
        self._parts = []
        for number, image in enumerate(images):
            self._show(image, number)  # one it cannot show is named in the run's text all the same
        return list(self._parts)

    def _show(self, image: NotebookImage, this_call: int) -> str | None:
        """Show ``image`` to the model (its part kept for this call's result); or, when it cannot be, say why, naming it."""
        if image.data is None:
            return f"{image.label} (not kept: {image.withheld or 'its bytes are gone'})"
        if this_call >= IMAGES_PER_CALL:
            return f"{image.label} (at most {IMAGES_PER_CALL} images a call)"
        if len(self._shown) >= IMAGES_PER_ANSWER:
            return f"{image.label} (at most {IMAGES_PER_ANSWER} images an answer)"
        try:
            part, tokens = self.show(image)
        except OblixError as error:  # Pillow cannot read it, or is missing: the model hears why, in words that name the image
            return str(error).rstrip(".")
        left = self.image_tokens - sum(self._shown)
        if tokens > left:
            return f"{image.label} (its {tokens:,} tokens are more than the {max(0, left):,} this turn has left)"
        self._parts.append(part)
        self._shown.append(tokens)
        return None

    @TOOLS.tool(
        "last_error",
        "The traceback of the last error raised in the notebook.",
        properties={},
        offered_when=lambda tools: tools.cells is not None,
    )
    def _last_error(self) -> tuple[str, str]:
        if not self.cells.error:
            return "No error has been raised in this notebook.", "read the last error: there is none"
        kind = self.cells.error.splitlines()[-1].split(":")[0]
        return self.cells.error, f"read the last error ({kind})"


# -- DataFrame filters -------------------------------------------------------------------


def _column(frame: Any, label: str, name: str) -> Any:
    """The column of ``frame`` called ``label``, also when its real label is not a string (``0``, a tuple)."""
    by_text = {label_text(c): c for c in frame.columns}
    if label in by_text:
        return by_text[label]
    close = difflib.get_close_matches(label, list(by_text), n=3)
    hint = f" Did you mean {', '.join(f'`{c}`' for c in close)}?" if close else ""
    listed = ", ".join(list(by_text)[:30]) + (", …" if len(by_text) > 30 else "")
    raise ToolRefusal(f"No column `{label}` in `{name}`.{hint} Columns: {listed}.")


def _condition_text(condition: Mapping[str, Any]) -> str:
    if condition["op"] in ("isna", "notna") or "value" not in condition:
        return f"{condition['column']} {condition['op']}"
    return f"{condition['column']} {condition['op']} {condition['value']!r}"


class _Matches:
    """The rows of ``frame`` meeting all (``and``) or any (``or``) of the conditions, found a block of rows at a time.

    Only a block's masks are in memory at once, and the matches are kept as bits, so a
    filter over 10,000,000 rows holds a few megabytes whatever it matches. The search
    stops after ``FILTER_SECONDS``: ``searched`` says how many rows it read.
    """

    def __init__(self, frame: Any, where: Sequence[Mapping[str, Any]], combine: str, name: str) -> None:
        import numpy  # loaded already: pandas needs it

        deadline = time.monotonic() + FILTER_SECONDS
        join = numpy.logical_and if combine == "and" else numpy.logical_or
        self.blocks: list[tuple[int, int, Any]] = []  # (first row, matches, packed bits)
        self.searched = self.total = 0
        while self.searched < len(frame) and (not self.blocks or time.monotonic() < deadline):
            block = frame.iloc[self.searched : self.searched + FILTER_BLOCK]
            mask = _condition_mask(block, where[0], name, 0)
            for number, condition in enumerate(where[1:], 1):
                mask = join(mask, _condition_mask(block, condition, name, number))
            matched = int(mask.sum())
            self.blocks.append((self.searched, matched, numpy.packbits(mask)))
            self.searched += len(block)
            self.total += matched

    def positions(self, ranks: Any) -> Any:
        """The row positions of the matches numbered ``ranks`` (sorted, counting from 0)."""
        import numpy  # loaded already: pandas needs it

        found, seen = [], 0
        for first, matched, bits in self.blocks:
            wanted = ranks[(ranks >= seen) & (ranks < seen + matched)]
            if len(wanted):
                inside = numpy.unpackbits(bits, count=min(FILTER_BLOCK, self.searched - first)).nonzero()[0]
                found.append(inside[wanted - seen] + first)
            seen += matched
        return numpy.concatenate(found) if found else numpy.zeros(0, dtype=numpy.int64)


def _condition_mask(frame: Any, condition: Mapping[str, Any], name: str, number: int) -> Any:
    label = _column(frame, condition["column"], name)
    series = frame[label]
    op, value = condition["op"], condition.get("value")
    about = f"where[{number}] ({_condition_text(condition)})"
    if op not in ("isna", "notna") and "value" not in condition:
        raise ToolRefusal(f"{about} needs a `value`.")
    if op in ("==", "!=") and value is None:
        op = "isna" if op == "==" else "notna"
    try:
        if op in ("isna", "notna"):
            result = series.isna() if op == "isna" else series.notna()
        elif op in ("in", "not in"):
            if not isinstance(value, list):
                raise ToolRefusal(f"{about}: `{op}` needs a list of values.")
            if len(value) > MAX_LISTED_VALUES:
                raise ToolRefusal(f"{about}: at most {MAX_LISTED_VALUES} values in a list; got {len(value)}.")
            result = series.isin([_coerced(series, item, about) for item in value])
            result = ~result if op == "not in" else result
        elif op in ("contains", "startswith"):
            if not isinstance(value, str):
                raise ToolRefusal(f"{about}: `{op}` needs a string value.")
            if series.dtype.kind in "biufcmM":
                raise ToolRefusal(f"{about}: `{op}` works on text columns; `{label}` is {series.dtype}.")
            text = series.str
            result = text.contains(value, regex=False, na=False) if op == "contains" else text.startswith(value, na=False)
        else:
            if isinstance(value, (list, dict)):
                raise ToolRefusal(f"{about}: `{op}` compares with one value; use `in` for a list.")
            result = _COMPARISONS[op](series, _coerced(series, value, about))
    except ToolRefusal:
        raise
    except (TypeError, ValueError, AttributeError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise ToolRefusal(f"{about} cannot be evaluated: {reason}.") from None
    return result.to_numpy(dtype=bool, na_value=False)


def _coerced(series: Any, value: Any, about: str) -> Any:
    """``value`` as the column's type: "42" for a number column, "2024-01-31" for a date column."""
    import pandas  # loaded already: the column is one of its Series

    dtype = series.dtype
    target = dtype.categories.dtype if isinstance(dtype, pandas.CategoricalDtype) else dtype
    kind = target.kind
    if kind in "iuf" and isinstance(value, str):
        for parse in (int, float):
            try:
                return parse(value)
            except ValueError:
                continue
        raise ToolRefusal(f"{about}: the column holds numbers ({dtype}) and {value!r} is not a number.")
    if kind == "b" and isinstance(value, str):
        if value.strip().lower() not in ("true", "false"):
            raise ToolRefusal(f"{about}: the column holds booleans and {value!r} is neither true nor false.")
        return value.strip().lower() == "true"
    if kind in "mM" and value is not None:
        try:
            stamp = pandas.Timestamp(value) if kind == "M" else pandas.Timedelta(value)
        except (TypeError, ValueError):
            raise ToolRefusal(f"{about}: the column holds {'dates' if kind == 'M' else 'durations'} ({dtype}) and {value!r} is not one.") from None
        zone = getattr(target, "tz", None)
        return stamp.tz_localize(zone) if kind == "M" and zone is not None and stamp.tzinfo is None else stamp
    if isinstance(target, pandas.StringDtype) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


def _picked(mode: str, total: int, limit: int, seed: int) -> Any:
    import numpy  # loaded already: pandas needs it

    shown = min(limit, total)
    if mode == "sample":
        return sample_positions(total, shown, seed)
    return numpy.arange(shown) if mode == "head" else numpy.arange(total - shown, total)



# -- text within the cap -----------------------------------------------------------------


def _fitted(
    head: list[str], items: list[str], tail: list[str], cap: int, count: Callable[[str], int], unit: str
) -> tuple[str, int]:
    """``head``, as many ``items`` as fit ``cap`` tokens, a marker saying how many were cut, then ``tail``; and how many fit."""

    def text(kept: int) -> str:
        cut = [f"[… cut: {len(items) - kept:,} more {unit}]"] if kept < len(items) else []
        return "\n".join(head + items[:kept] + cut + tail)

    if count(text(len(items))) <= cap:
        return text(len(items)), len(items)
    low, high = 0, len(items) - 1  # binary search: a handful of count() calls even for a slow tokenizer
    while low < high:
        middle = (low + high + 1) // 2
        if count(text(middle)) <= cap:
            low = middle
        else:
            high = middle - 1
    return text(low), low


def _capped(text: str, cap: int, count: Callable[[str], int]) -> str:
    """``text`` within ``cap`` tokens, ending with "[… cut: N more characters]" when it had to be cut."""
    if count(text) <= cap:
        return text
    widest = f"\n[… cut: {len(text):,} more characters]"  # the real marker is never longer
    kept = truncate_to_tokens(text, cap, count, marker=widest)
    kept = kept[: -len(widest)] if kept.endswith(widest) else ""
    return f"{kept}\n[… cut: {len(text) - len(kept):,} more characters]"
