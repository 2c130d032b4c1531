"""The bounded text of any user object: read on a slice, converted on a worker thread under one shared deadline, secret keys withheld.

The user's objects are data that may be hostile: turning one into text (``text_of``)
looks inside built-in containers, pandas and NumPy objects only, and always on a slice,
never the whole object; any other object (a ``shelve``, a lazy proxy, an ORM row) is
never indexed or iterated, only given its type and a ``repr`` cut short, under one time
limit shared by everything a tool call or a prompt converts (``text_budget``). pandas
and NumPy are recognised by the type's module, never imported. ``markdown_table`` is
the kernel's one table writer, used by this text and by the descriptions.
"""

from __future__ import annotations

import threading
import time
import types
from collections import Counter, OrderedDict, defaultdict, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from ..redaction import WITHHELD, is_secret_name, redact

REPR_SECONDS = 0.5  # the most one conversion of a user object to text may take
TEXT_SECONDS = 2.0  # the most all the conversions of one tool call, or of one prompt's summaries, take together
DEPTH = 4  # levels of nested built-in containers shown
# Looked into: exactly these types (a subclass may override what iterating or indexing does).
CONTAINERS = frozenset({dict, OrderedDict, defaultdict, Counter, list, tuple, deque, set, frozenset})
MAPPINGS = frozenset({dict, OrderedDict, defaultdict, Counter})
SCALARS = frozenset({bool, int, float, complex, type(None)})
ROUTINES = (types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.MethodWrapperType, types.MethodDescriptorType)
# Characters beyond a cut that are still redacted, so that a key straddling the cut is seen whole.
_SLACK = 256
_deadline: ContextVar[float | None] = ContextVar("oblix_text_deadline", default=None)


def type_name(value: Any) -> str:
    """The type's name, with its top-level package unless it is built in or the notebook's own."""
    kind = type(value)
    module = kind.__module__
    return kind.__qualname__ if module in ("builtins", "__main__") else f"{module.split('.')[0]}.{kind.__qualname__}"


def is_type(value: Any, module: str, *names: str) -> bool:
    """Whether ``value`` is one of ``module``'s types ``names``, judged without importing ``module``."""
    kind = type(value)
    return kind.__module__.split(".")[0] == module and kind.__name__ in names


def is_container(value: Any) -> bool:
    """Whether ``value`` is a built-in container, the only kind (with pandas' and NumPy's) whose items are looked at."""
    return type(value) in CONTAINERS


def is_mapping(value: Any) -> bool:
    return type(value) in MAPPINGS


def is_module(value: Any) -> bool:
    """Whether ``value`` is a module; judged by its type, never by ``isinstance``, which would ask a lazy proxy its ``__class__``."""
    return issubclass(type(value), types.ModuleType)


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
        elif kind in SCALARS:
            try:
                self.write(repr(value))
            except ValueError:  # an int too long for its decimal text
                self.write(f"<int of {value.bit_length():,} bits>")
        elif kind in CONTAINERS:
            self._container(value, depth)
        elif is_type(value, "pandas", "DataFrame", "Series"):
            frame = value.to_frame() if is_type(value, "pandas", "Series") else value
            rows, width = frame.shape
            self.write(f"<pandas {kind.__name__}, {rows:,} rows × {width:,} columns>")
            if depth == 0 and rows:
                head = frame.iloc[:5, :8]
                self.write("\n" + markdown_table(head.columns, head.index, head.values.tolist(), 24, reveal=self.reveal))
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
        mapping = type(items) in MAPPINGS
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


def label_text(label: Any, quoted: bool = False) -> str:
    """A column's, index's or Series' label as text, however odd its type (``0``, a tuple, an object)."""
    text = text_of(label, 80, as_str=not quoted)
    return f"<{type_name(label)}>" if text is None else text


def is_secret_label(label: Any) -> bool:
    """Whether a column's label says its values are secrets (``api_key``, ``password``)."""
    return is_secret_name(label if type(label) is str else label_text(label))


def markdown_table(
    columns: Sequence[Any], index: Any, rows: Sequence[Sequence[Any]], width: int, *, corner: str = "", reveal: bool = False
) -> str:
    """A Markdown table of ``rows`` headed by ``columns``, its first column ``index`` headed ``corner``.

    Each cell is at most ``width`` characters; the cells of secret-looking columns are
    withheld unless ``reveal``, so that no caller can forget to.
    """

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.6g}"
        text = text_of(value, width, as_str=True)
        return f"<{type_name(value)}>" if text is None else text.replace("|", "\\|").replace("\n", " ")

    hidden = set() if reveal else {n for n, label in enumerate(columns) if is_secret_label(label)}
    first = f"| {cell(corner)} | " if corner else "| | "
    lines = [first + " | ".join(cell(c) for c in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for label, row in zip(index, rows):
        lines.append("| " + " | ".join([cell(label)] + [WITHHELD if n in hidden else cell(v) for n, v in enumerate(row)]) + " |")
    return "\n".join(lines)
