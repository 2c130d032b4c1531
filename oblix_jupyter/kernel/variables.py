"""Short, capped descriptions of the notebook variables a prompt refers to, and the safe text of any user object.

A variable is described when ``--vars`` names it, the prompt writes it as ``{name}``, or
its name appears in the prompt as a word. Each description fits ``cap_tokens``: a
DataFrame gives its shape, dtypes, missing values and first rows as a Markdown table; an
array its shape, dtype and range; containers their length and first items; functions
their signature. pandas and NumPy are recognised by the type's module, never imported.

The user's objects are data that may be hostile: turning one into text (``text_of``)
looks inside built-in containers, pandas and NumPy objects only, and always on a slice,
never the whole object; any other object (a ``shelve``, a lazy proxy, an ORM row) is
never indexed or iterated, only given its type and a ``repr`` cut short, under one time
limit shared by everything a tool call or a prompt converts. Secret-looking names are
left out unless named explicitly, and so are the values under secret-looking keys and
columns, at any depth; the text then goes through the one redaction (``redaction``).
"""

from __future__ import annotations

import inspect
import re
import sys
import threading
import time
import types
from collections import Counter, OrderedDict, defaultdict, deque
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from itertools import islice
from typing import Any

from ..context.inputs import VariableSummary
from ..context.relevance import truncate_to_tokens
from ..redaction import WITHHELD, is_secret_name, redact, withhold_values

REPR_SECONDS = 0.5  # the most one conversion of a user object to text may take
TEXT_SECONDS = 2.0  # the most all the conversions of one tool call, or of one prompt's summaries, take together
DEPTH = 4  # levels of nested built-in containers shown
_HARVESTED = 200  # items of one variable looked through for values under secret-looking names
# Looked into: exactly these types (a subclass may override what iterating or indexing does).
_CONTAINERS = frozenset({dict, OrderedDict, defaultdict, Counter, list, tuple, deque, set, frozenset})
_MAPPINGS = frozenset({dict, OrderedDict, defaultdict, Counter})
_SCALARS = frozenset({bool, int, float, complex, type(None)})
_ROUTINES = (types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.MethodWrapperType, types.MethodDescriptorType)
# Characters beyond a cut that are still redacted, so that a key straddling the cut is seen whole.
_SLACK = 256
_deadline: ContextVar[float | None] = ContextVar("oblix_text_deadline", default=None)
_IPYTHON_NAMES = frozenset({"In", "Out", "get_ipython", "exit", "quit"})
_BRACED = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_IDENTIFIER = re.compile(r"(?<![\w.])[A-Za-z_][A-Za-z0-9_]*")
_QUOTED = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)")


def approximate_tokens(text: str) -> int:
    """About four characters a token, for callers without a model's counter."""
    return (len(text) + 3) // 4


def is_hidden_name(name: str) -> bool:
    """IPython's own names and private ones (``_``, ``_i3``, ``_cache``): never offered or sent as context."""
    return name.startswith("_") or name in _IPYTHON_NAMES


def referenced_names(prompt: str, namespace: Mapping[str, Any], named: Sequence[str] = ()) -> list[str]:
    """Names to describe, in order: ``named`` first, then ``{name}``, then names the prompt mentions.

    A bare word counts only when it is a variable of the namespace, at least two
    characters long (or quoted in backticks), not IPython's own, and not a module.
    """
    chosen = list(dict.fromkeys(named))
    for name in _BRACED.findall(prompt):
        if name in namespace and name not in chosen:
            chosen.append(name)
    quoted = set(_QUOTED.findall(prompt))
    for name in _IDENTIFIER.findall(prompt):
        if name in chosen or name not in namespace or is_hidden_name(name):
            continue
        if len(name) < 2 and name not in quoted:
            continue
        if is_module(namespace[name]):
            continue
        chosen.append(name)
    return chosen


def summarize_variables(
    namespace: Mapping[str, Any],
    prompt: str,
    named: Sequence[str] = (),
    cap_tokens: int = 200,
    count: Callable[[str], int] | None = None,
) -> list[VariableSummary]:
    """Capped summaries of the variables ``prompt`` refers to (see the module docstring).

    A variable ``named`` explicitly is sent as it is, secrets and all: the user asked for it.
    """
    count = count or approximate_tokens
    explicit = set(named)
    withheld: list[str] | None = None  # found once, and only when a variable is described
    summaries = []
    with text_budget(TEXT_SECONDS):
        for name in referenced_names(prompt, namespace, named):
            if name not in namespace:
                summaries.append(VariableSummary(name, "", 0, f"`{name}` is not defined in the notebook.", excluded=True))
                continue
            value = namespace[name]
            warning = None
            if is_secret_name(name):
                if name not in explicit:
                    warning = f"`{name}` looks like a secret and was not sent; name it in --vars to send it."
                    summaries.append(VariableSummary(name, "", 0, warning, excluded=True))
                    continue
                warning = f"`{name}` looks like a secret and is sent because --vars named it."
            withheld = secret_values(namespace, explicit) if withheld is None else withheld
            text = describe(name, value, cap_tokens, count, reveal=name in explicit, withheld=withheld)
            summaries.append(VariableSummary(name, text, count(text), warning))
    return summaries


def secret_values(namespace: Mapping[str, Any], named: Collection[str] = ()) -> list[str]:
    """The strings the notebook marks as secret, unless the user named their variable: never shown in any text.

    They are the values of secret-named string variables and, inside the other
    variables, the strings under secret-looking keys, DataFrame columns and attributes
    (a dataclass's fields, an object's ``__dict__``), so that a value is withheld also
    where nothing names it: a cell's source (``Settings("bob", "pw-4417")``), a traceback,
    another variable. The look is bounded (``_HARVESTED`` items a variable) and runs no
    code of the objects': ``__dict__`` is read only through Python's own descriptor.
    """
    found: list[str] = []
    for name, value in list(namespace.items()):
        if name in named or is_hidden_name(name):
            continue
        if is_secret_name(name):
            found += [value] if type(value) is str else []
            continue
        try:
            _harvest(value, found, [_HARVESTED], 0)
        except Exception:  # noqa: BLE001 - a frame with odd columns, a dict changed meanwhile: what was found stands
            continue
    return found


def _harvest(value: Any, found: list[str], budget: list[int], depth: int, secret: bool = False) -> None:
    """Add to ``found`` the strings of ``value`` that sit under secret-looking names (all of them when ``secret``)."""
    budget[0] -= 1
    if budget[0] < 0 or depth > DEPTH:
        return
    kind = type(value)
    if kind is str:
        found += [value] if secret else []
    elif kind in _MAPPINGS:
        for key, item in islice(value.items(), max(0, budget[0])):
            _harvest(item, found, budget, depth + 1, secret or type(key) is str and is_secret_name(key))
    elif kind in _CONTAINERS:
        for item in islice(value, max(0, budget[0])):
            if type(item) in _SCALARS or type(item) is str and not secret:  # nothing to find: counted, not visited
                budget[0] -= 1
            else:
                _harvest(item, found, budget, depth + 1, secret)
    elif is_type(value, "pandas", "DataFrame"):
        for label in value.columns[:100]:
            if type(label) is str and is_secret_name(label):
                found += [cell for cell in value[label].iloc[:100].tolist() if type(cell) is str]
    elif not issubclass(kind, (type, types.ModuleType, *_ROUTINES)) and kind.__module__.split(".")[0] not in ("numpy", "pandas"):
        fields = _instance_dict(value)
        if fields is not None:
            _harvest(fields, found, budget, depth + 1, secret)


def _instance_dict(value: Any) -> dict[str, Any] | None:
    """An object's ``__dict__`` when Python's own descriptor holds it (a class may make ``__dict__`` a property)."""
    for klass in type(value).__mro__:
        descriptor = klass.__dict__.get("__dict__")
        if descriptor is not None:
            fields = descriptor.__get__(value, type(value)) if type(descriptor) is types.GetSetDescriptorType else None
            return fields if type(fields) is dict else None
    return None


def describe(
    name: str, value: Any, cap_tokens: int, count: Callable[[str], int], *, reveal: bool = False, withheld: Collection[str] = ()
) -> str:
    """The richest description of ``value`` that fits ``cap_tokens``, cut with ``[…]`` as a last resort.

    Unless ``reveal``, it is redacted before any cut (which could leave half a key to be
    recognised), with the values under secret-looking keys and columns and the
    ``withheld`` strings (``secret_values``) taken out.
    """
    text = ""
    counted: dict[str, Any] = {}  # what every level of detail needs once: a frame's missing values (70 ms on 1M rows of text)
    for detail in (0, 1, 2):
        try:
            text = f"`{name}`: " + _describe(value, detail, counted, reveal)
        except Exception:  # a broken __len__, property or dtype: say what we safely can
            text = f"`{name}`: {type_name(value)}"
        text = text if reveal else withhold_values(redact(text), withheld)
        if count(text) <= cap_tokens:
            return text
    return truncate_to_tokens(text, cap_tokens, count)


def type_name(value: Any) -> str:
    kind = type(value)
    module = kind.__module__
    return kind.__qualname__ if module in ("builtins", "__main__") else f"{module.split('.')[0]}.{kind.__qualname__}"


def is_type(value: Any, module: str, *names: str) -> bool:
    kind = type(value)
    return kind.__module__.split(".")[0] == module and kind.__name__ in names


def is_container(value: Any) -> bool:
    """Whether ``value`` is a built-in container, the only kind (with pandas' and NumPy's) whose items are looked at."""
    return type(value) in _CONTAINERS


def is_mapping(value: Any) -> bool:
    return type(value) in _MAPPINGS


def is_module(value: Any) -> bool:
    """Whether ``value`` is a module; judged by its type, never by ``isinstance``, which would ask a lazy proxy its ``__class__``."""
    return issubclass(type(value), types.ModuleType)


# -- the text of any object, bounded -------------------------------------------------


@contextmanager
def text_budget(seconds: float) -> Iterator[None]:
    """Let every conversion inside share one deadline, so that many slow objects cannot add their limits up."""
    token = _deadline.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _deadline.reset(token)


def text_of(value: Any, limit: int, *, as_str: bool = False, reveal: bool = False) -> str | None:
    """The text of ``value`` in at most ``limit`` characters (cut with "…"), or None when it cannot be had safely.

    Built-in containers, strings and bytes are read only as far as ``limit`` needs, to
    ``DEPTH`` levels, with the values under secret-looking keys withheld unless
    ``reveal``; pandas and NumPy objects show their first items; anything else is its
    own ``repr`` (``str`` with ``as_str``) made on a worker thread and given up after
    ``REPR_SECONDS`` or when the shared deadline (``text_budget``) has passed. None when
    that conversion of ``value`` itself fails or takes too long.
    """
    writer = _Writer(limit, reveal)
    try:
        if not writer.value(value, as_str, 0):
            return None
    except _Full:
        pass
    return writer.text()


class _Full(Exception):
    """The text reached its limit."""


class _Writer:
    """Text of objects, written into a fixed number of characters."""

    def __init__(self, limit: int, reveal: bool) -> None:
        self.room = max(0, limit)
        self.reveal = reveal
        self.pieces: list[str] = []

    def text(self) -> str:
        return "".join(self.pieces)

    def write(self, text: str, redacted: bool = False) -> None:
        if len(text) <= self.room:
            self.pieces.append(text)
            self.room -= len(text)
            return
        if not redacted and not self.reveal:  # redacted before the cut, which could leave half a key to be recognised
            text = redact(text[: self.room + _SLACK])
        self.pieces.append(text[: max(0, self.room - 1)] + "…")
        self.room = 0
        raise _Full

    def value(self, value: Any, as_str: bool, depth: int) -> bool:
        """Write ``value``; False (having written nothing) when its own conversion failed or took too long."""
        kind = type(value)
        if kind is str:
            piece = value[: self.room + _SLACK]
            self.write(piece if as_str else repr(piece))
        elif kind is bytes or kind is bytearray:
            self.write(repr(bytes(value[: self.room + _SLACK])))
        elif kind in _SCALARS:
            try:
                self.write(repr(value))
            except ValueError:  # an int too long for its decimal text
                self.write(f"<int of {value.bit_length():,} bits>")
        elif kind in _CONTAINERS:
            self._container(value, depth)
        elif is_type(value, "pandas", "DataFrame", "Series"):
            frame = value.to_frame() if is_type(value, "pandas", "Series") else value
            rows, width = frame.shape
            self.write(f"<pandas {kind.__name__}, {rows:,} rows × {width:,} columns>")
            if depth == 0 and rows:
                head = frame.iloc[:5, :8]
                self.write("\n" + markdown_table(head.columns, head.index, head.values.tolist(), 24, self.reveal))
        elif is_type(value, "numpy", "ndarray"):
            self.write(f"<numpy array, shape {tuple(value.shape)}, dtype {value.dtype}> ")
            self.value(value.flat[: max(1, self.room // 2)].tolist(), as_str, depth + 1)
        elif kind.__module__.split(".")[0] in ("numpy", "pandas") and not isinstance(value, (Sequence, Mapping)):
            self.write(str(value) if as_str else repr(value))  # their scalars: a number, a date, NaT
        else:
            text = _guarded(str if as_str else repr, value)
            if text is None:
                if depth == 0:
                    return False
                text = f"<{type_name(value)}>"
            self.write(text if self.reveal else redact(text[: self.room + _SLACK]), redacted=True)
        return True

    def _container(self, items: Any, depth: int) -> None:
        mapping = type(items) in _MAPPINGS
        opening, closing = ("{", "}") if mapping or isinstance(items, (set, frozenset)) else ("(", ")") if type(items) is tuple else ("[", "]")
        if not items:
            self.write({"set": "set()", "frozenset": "frozenset()"}.get(type(items).__name__, opening + closing))
            return
        if depth >= DEPTH:
            self.write(opening + "…" + closing)
            return
        self.write(opening)
        try:
            for number, item in enumerate(items.items() if mapping else items):
                if number:
                    self.write(", ")
                if not mapping:
                    self.value(item, False, depth + 1)
                    continue
                key, value = item
                self.value(key, False, depth + 1)
                self.write(": ")
                if type(key) is str and is_secret_name(key) and not self.reveal:
                    self.write(WITHHELD)
                else:
                    self.value(value, False, depth + 1)
        except RuntimeError:  # changed by another thread while read: what was read is shown
            self.write(", …")
        self.write(closing)


def _guarded(convert: Callable[[Any], str], value: Any) -> str | None:
    """``convert(value)`` on a worker thread, or None if it raises or outlasts ``REPR_SECONDS`` or the deadline.

    A thread rather than a signal: tools also run outside the main thread (``OblixClient.execute``).
    """
    deadline = _deadline.get()
    seconds = REPR_SECONDS if deadline is None else min(REPR_SECONDS, deadline - time.monotonic())
    if seconds <= 0:
        return None
    conversion = _Conversion(convert, value)
    conversion.start()
    conversion.join(seconds)
    if conversion.is_alive():
        conversion.abandon()
        return None
    return conversion.text


class _Abandoned(BaseException):
    """Raised inside a conversion that outlasted its time, so that a busy loop does not keep running."""


class _Conversion(threading.Thread):
    """One conversion of a user object to text, on a thread of its own so that it can be given up."""

    def __init__(self, convert: Callable[[Any], str], value: Any) -> None:
        super().__init__(name="oblix-repr", daemon=True)
        self.convert, self.value = convert, value
        self.text: str | None = None
        self.lock = threading.Lock()
        self.running = True

    def run(self) -> None:
        try:
            text = self.convert(self.value)
            self.text = text if type(text) is str else None
        except BaseException:  # noqa: BLE001 - whatever the object raises, _Abandoned included
            pass
        try:
            with self.lock:
                self.running = False
        except _Abandoned:  # arrived as it finished
            pass

    def abandon(self) -> None:
        """Stop it at its next Python instruction (a sleep or a C call runs out first); only while it runs, never a thread that took its id."""
        with self.lock:
            if self.running:
                import ctypes  # only when a conversion is abandoned

                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.ident or 0), ctypes.py_object(_Abandoned))


def markdown_table(columns: Sequence[Any], index: Any, rows: Sequence[Sequence[Any]], width: int, reveal: bool = False) -> str:
    """A Markdown table of ``rows``, each cell at most ``width`` characters; the cells of secret-looking columns withheld."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.6g}"
        text = text_of(value, width, as_str=True)
        return f"<{type_name(value)}>" if text is None else text.replace("|", "\\|").replace("\n", " ")

    labels = [cell(c) for c in columns]
    hidden = {n for n, c in enumerate(columns) if not reveal and is_secret_name(str(c) if type(c) is str else labels[n])}
    lines = ["| | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for label, row in zip(index, rows):
        cells = [WITHHELD if n in hidden else cell(v) for n, v in enumerate(row)]
        lines.append("| " + cell(label) + " | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- descriptions by type --------------------------------------------------------------


def _describe(value: Any, detail: int, counted: dict[str, Any], reveal: bool) -> str:
    if is_type(value, "pandas", "DataFrame"):
        return _dataframe(value, detail, counted, reveal)
    if is_type(value, "pandas", "Series"):
        return _series(value, detail, counted, reveal)
    if is_type(value, "numpy", "ndarray"):
        return _array(value, detail)
    if type(value) in _SCALARS:
        return f"{type_name(value)} = {text_of(value, 80)}"
    if type(value) in (str, bytes, bytearray):
        preview = (200, 80, 0)[detail]
        head = f"{type_name(value)} of length {len(value)}"
        return head + (f": {text_of(value, preview, reveal=reveal)}" if preview else "")
    if is_mapping(value):
        return _mapping(value, detail, reveal)
    if is_container(value):
        return _collection(value, detail, reveal)
    if is_module(value):
        return f"module {value.__name__}"
    if issubclass(type(value), (type, *_ROUTINES)):
        return _callable(value, detail)
    if detail == 2:
        return type_name(value)
    if "repr" not in counted:  # made once for every level of detail: each try may take REPR_SECONDS
        shown = text_of(value, 160, reveal=reveal)
        counted["repr"] = redact(shown) if shown and not reveal else shown  # before any cut below
    shown = counted["repr"]
    if shown and detail == 1 and len(shown) > 60:
        shown = shown[:59] + "…"
    return type_name(value) + (f": {shown}" if shown else "")


def _dataframe(frame: Any, detail: int, counted: dict[str, Any], reveal: bool) -> str:
    rows, columns = frame.shape
    limit = (12, 6, 3)[detail]
    names = list(frame.columns[:limit])
    more = f", … {columns - limit} more" if columns > limit else ""
    lines = [f"pandas DataFrame, {rows} rows × {columns} columns"]
    lines.append("dtypes: " + ", ".join(f"{c} {frame.dtypes[c]}" for c in names) + more)
    if "missing" not in counted:
        counted["missing"] = missing_counts(frame)
    holes = [(c, n) for c, n in zip(frame.columns, counted["missing"]) if n]
    lines.append("missing values: " + (", ".join(f"{c} {n}" for c, n in holes[:limit]) if holes else "none"))
    if detail < 2 and rows:
        head = frame.iloc[: (5, 3)[detail], : (8, 5)[detail]]
        lines.append("head():\n" + markdown_table(head.columns, head.index, head.values.tolist(), 24, reveal))
    return "\n".join(lines)


def missing_counts(frame: Any) -> list[int]:
    """Missing values per column, a column at a time: one column's mask in memory, not the whole frame's."""
    return [0 if _never_missing(frame.dtypes.iloc[n]) else int(frame.iloc[:, n].isna().sum()) for n in range(frame.shape[1])]


def _never_missing(dtype: Any) -> bool:
    """NumPy's integer and boolean columns cannot hold a missing value (pandas' nullable ``Int64`` can)."""
    return type(dtype).__module__.split(".")[0] == "numpy" and dtype.kind in "biu"


def _series(series: Any, detail: int, counted: dict[str, Any], reveal: bool) -> str:
    if "missing" not in counted:
        counted["missing"] = int(series.isna().sum())
    missing = counted["missing"]
    lines = [f"pandas Series {text_of(series.name, 40)}, length {len(series)}, dtype {series.dtype}, {missing} missing"]
    hidden = not reveal and is_secret_name(str(series.name))
    if series.dtype.kind in "biuf" and len(series) and not hidden:
        lines.append(f"min {float(series.min()):.6g}, max {float(series.max()):.6g}, mean {float(series.mean()):.6g}")
    if detail < 2 and len(series):
        head = series.iloc[: (5, 3)[detail]]
        lines.append("head():\n" + markdown_table([series.name], head.index, [[v] for v in head.tolist()], 24, reveal))
    return "\n".join(lines)


def _array(array: Any, detail: int) -> str:
    text = f"numpy array, shape {tuple(array.shape)}, dtype {array.dtype}"
    numpy = sys.modules.get("numpy")
    if numpy is not None and array.size and array.dtype.kind in "biuf" and array.size <= 50_000_000:
        low, high, mean = numpy.nanmin(array), numpy.nanmax(array), numpy.nanmean(array)
        text += f", min {low:.6g}, max {high:.6g}, mean {mean:.6g}"
    if detail < 2 and array.size:
        text += f", first values {text_of(array.flat[: (6, 3)[detail]].tolist(), 120)}"
    return text


def _collection(items: Any, detail: int, reveal: bool) -> str:
    shown = (5, 3, 0)[detail]
    text = f"{type_name(items)} of {len(items)} items"
    if shown and len(items):
        first = [text_of(item, 40, reveal=reveal) or f"<{type_name(item)}>" for item, _ in zip(items, range(shown))]
        text += ": " + ", ".join(first) + (", …" if len(items) > shown else "")
    return text


def _mapping(mapping: Mapping[Any, Any], detail: int, reveal: bool) -> str:
    shown = (12, 6, 0)[detail]
    text = f"{type_name(mapping)} of {len(mapping)} keys"
    if shown and len(mapping):
        items = [item for item, _ in zip(mapping.items(), range(shown))]
        parts = [f"{text_of(key, 30)}: {type_name(value)}" for key, value in items]
        text += " {" + ", ".join(parts) + (", …" if len(mapping) > shown else "") + "}"
    return text


def _callable(value: Any, detail: int) -> str:
    kind = "class" if issubclass(type(value), type) else "function"
    try:
        signature = str(inspect.signature(value))
    except (TypeError, ValueError):
        signature = "(…)"
    text = f"{kind} {getattr(value, '__qualname__', type_name(value))}{signature}"
    doc = inspect.getdoc(value) if detail < 2 else None
    if doc:
        text += f": {doc.strip().splitlines()[0][:160]}"
    return text
