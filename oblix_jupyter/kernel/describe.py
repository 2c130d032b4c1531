"""The one describer of notebook values: what a value is (type, size, shape, columns, first items) at the detail its reader has room for.

A prompt's variable summary (``describe``) tries ``SUMMARY``, then ``SHORTER``, then
``BRIEF`` until the text fits its cap; a tool's look at one variable (``describe_fully``)
is ``FULL``; a listing gives each variable a ``glance``. All of them read the same facts
through the same code, so a value never reads differently to the model depending on
which path asked. Values under secret-looking keys and columns are withheld unless
``reveal``; summaries also pass through the one redaction here, while a tool redacts its
whole result. Only built-in containers, pandas and NumPy objects are looked into
(``text``); pandas and NumPy are never imported here, only used when a value is theirs.
"""

from __future__ import annotations

import inspect
import sys
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from ..context.relevance import truncate_to_tokens
from ..redaction import WITHHELD, is_secret_name, redact
from .text import (
    ROUTINES,
    SCALARS,
    is_container,
    is_mapping,
    is_module,
    is_secret_label,
    is_type,
    label_text,
    markdown_table,
    text_of,
    type_name,
)

FULL, SUMMARY, SHORTER, BRIEF = range(4)  # levels of detail, richest first
# An array's min, max and mean read every element: above this many they are left out rather than make the reader wait.
STATS_ELEMENTS = 50_000_000
# describe() of a bigger frame reads a seeded sample, since its cost grows with the rows (measured: see benchmarks/bench_tools.py).
SAMPLE_ROWS = 100_000
# Value counts are exact up to this many rows, of a seeded sample above: their memory grows with the distinct values.
COUNTED_ROWS = 2_000_000
VALUE_COUNTS = 20  # values shown in a column's counts
_TABLE_WIDTH = 60  # characters of one cell in a full description's tables
_HEAD_WIDTH = 24  # characters of one cell of a summary's head()


@dataclass
class _Look:
    """How one description is being made: its level, what the reader may see, and what is computed once for all levels."""

    detail: int
    reveal: bool
    name: str = ""
    preview: int = 0  # characters of an object's own text shown at FULL
    counts_of: Any = None  # the column whose value counts a FULL description adds
    counted: dict[str, Any] = field(default_factory=dict)  # a frame's missing values, an object's repr: costly, made once


def describe(
    name: str, value: Any, cap_tokens: int, count: Callable[[str], int], *, reveal: bool = False, withheld: Collection[str] = ()
) -> str:
    """The richest summary of ``value`` that fits ``cap_tokens``, cut with ``[…]`` as a last resort.

    Unless ``reveal``, it is redacted before any cut (which could leave half a key to be
    recognised), with the values under secret-looking keys and columns and the
    ``withheld`` strings (``variables.secret_values``) taken out.
    """
    text = ""
    look = _Look(SUMMARY, reveal)
    for detail in (SUMMARY, SHORTER, BRIEF):
        look.detail = detail
        try:
            text = f"`{name}`: " + _described(value, look)
        except Exception:  # noqa: BLE001 - a broken __len__, property or dtype: say what we safely can
            text = f"`{name}`: {type_name(value)}"
        text = text if reveal else redact(text, withheld=withheld)
        if count(text) <= cap_tokens:
            return text
    return truncate_to_tokens(text, cap_tokens, count)


def describe_fully(name: str, value: Any, *, preview: int, reveal: bool = False, counts_of: Any = None) -> str:
    """Everything worth knowing about one variable, for a model that asked about it; the caller caps and redacts it.

    A DataFrame gets its dtypes and missing values per column, ``describe()`` and the value
    counts of column ``counts_of`` (a real label of the frame); a Series the same, counting
    its own values unless they are floats. An object's own text is cut at ``preview``
    characters. The user's objects may fail in any way: the error is the caller's to report.
    """
    return f"`{name}`: " + _described(value, _Look(FULL, reveal, name, preview, counts_of))


def glance(name: str, value: Any, count: Callable[[str], int], *, reveal: bool = False) -> str:
    """One line about ``value``, cheap even for a 1,000,000-row DataFrame: nothing is computed over its rows."""
    if is_type(value, "pandas", "DataFrame"):
        shown = ", ".join(label_text(c) for c in value.columns[:8]) + (", …" if value.shape[1] > 8 else "")
        return f"`{name}`: {_frame_header(value)}: {shown}"
    if is_type(value, "pandas", "Series"):
        return f"`{name}`: {_series_header(value)}"
    if is_type(value, "numpy", "ndarray"):
        return f"`{name}`: {_array_header(value)}"
    return describe(name, value, 40, count, reveal=reveal).splitlines()[0]


def sample_positions(total: int, size: int, seed: int) -> Any:
    """``size`` distinct row positions out of ``total``, in order, the same for the same seed."""
    import numpy  # loaded already: the frame sampled is pandas', which needs it

    return numpy.sort(numpy.random.default_rng(seed).choice(total, size=size, replace=False))


def _described(value: Any, look: _Look) -> str:
    kind = type(value)
    if is_type(value, "pandas", "DataFrame"):
        return _dataframe(value, look)
    if is_type(value, "pandas", "Series"):
        return _series(value, look)
    if is_type(value, "numpy", "ndarray"):
        return _array(value, look)
    if kind in SCALARS:
        return f"{type_name(value)} = {text_of(value, 80)}"
    if kind in (str, bytes, bytearray):
        preview = (look.preview, 200, 80, 0)[look.detail]
        head = f"{type_name(value)} of length {len(value):,}"
        return head + (f": {text_of(value, preview, reveal=look.reveal)}" if preview else "")
    if is_mapping(value):
        return _mapping(value, look)
    if is_container(value) or kind is range:
        return _collection(value, look)
    if is_module(value):
        return f"module {value.__name__}"
    if issubclass(kind, (type, *ROUTINES)):
        return _callable(value, look)
    return _other(value, look)


# -- pandas and NumPy --------------------------------------------------------------------


def _frame_header(frame: Any) -> str:
    rows, width = frame.shape
    return f"pandas DataFrame, {rows:,} rows × {width:,} columns"


def _series_header(series: Any, missing: int | None = None) -> str:
    holes = "" if missing is None else f", {missing:,} missing"
    return f"pandas Series {label_text(series.name, quoted=True)}, length {len(series):,}, dtype {series.dtype}{holes}"


def _array_header(array: Any) -> str:
    return f"numpy array, shape {tuple(array.shape)}, dtype {array.dtype}"


def _dataframe(frame: Any, look: _Look) -> str:
    rows, width = frame.shape
    if "missing" not in look.counted:
        # A column at a time: one column's mask in memory, not the whole frame's.
        look.counted["missing"] = [0 if _never_missing(frame.dtypes.iloc[n]) else int(frame.iloc[:, n].isna().sum()) for n in range(width)]
    missing = look.counted["missing"]
    if look.detail == FULL:
        overview = [[frame.dtypes.iloc[n], f"{missing[n]:,}"] for n in range(width)]
        columns = "columns:\n" + markdown_table(["dtype", "missing"], frame.columns, overview, _TABLE_WIDTH, corner="column")
        return _in_full(frame, [_frame_header(frame), columns], look)
    limit = (0, 12, 6, 3)[look.detail]
    more = f", … {width - limit} more" if width > limit else ""
    lines = [_frame_header(frame), "dtypes: " + ", ".join(f"{label_text(frame.columns[n])} {frame.dtypes.iloc[n]}" for n in range(min(limit, width))) + more]
    holes = [(label_text(label), n) for label, n in zip(frame.columns, missing) if n]
    lines.append("missing values: " + (", ".join(f"{label} {n:,}" for label, n in holes[:limit]) if holes else "none"))
    if look.detail != BRIEF and rows:
        head = frame.iloc[: (0, 5, 3)[look.detail], : (0, 8, 5)[look.detail]]
        lines.append("head():\n" + markdown_table(head.columns, head.index, head.values.tolist(), _HEAD_WIDTH, reveal=look.reveal))
    return "\n".join(lines)


def _never_missing(dtype: Any) -> bool:
    """NumPy's integer and boolean columns cannot hold a missing value (pandas' nullable ``Int64`` can)."""
    return type(dtype).__module__.split(".")[0] == "numpy" and dtype.kind in "biu"


def _series(series: Any, look: _Look) -> str:
    if "missing" not in look.counted:
        look.counted["missing"] = int(series.isna().sum())
    header = _series_header(series, look.counted["missing"])
    hidden = not look.reveal and is_secret_label(series.name)
    if look.detail == FULL:
        label = series.name if series.name is not None else look.name
        if look.counts_of is None and series.dtype.kind not in "fc" and not hidden:
            look.counts_of = label
        return _in_full(series.to_frame(name=label), [header], look)
    lines = [header]
    if series.dtype.kind in "biuf" and len(series) and not hidden:
        lines.append(f"min {float(series.min()):.6g}, max {float(series.max()):.6g}, mean {float(series.mean()):.6g}")
    if look.detail != BRIEF and len(series):
        head = series.iloc[: (0, 5, 3)[look.detail]]
        lines.append("head():\n" + markdown_table([series.name], head.index, [[v] for v in head.tolist()], _HEAD_WIDTH, reveal=look.reveal))
    return "\n".join(lines)


def _in_full(frame: Any, parts: list[str], look: _Look) -> str:
    """``parts`` followed by the frame's ``describe()`` and the value counts of ``look.counts_of``, secret columns left out."""
    rows, width = frame.shape
    secret = [] if look.reveal else [n for n, label in enumerate(frame.columns) if is_secret_label(label)]
    if secret:
        parts.append(f"Values of {', '.join(f'`{label_text(frame.columns[n])}`' for n in secret)} withheld: secret-looking column names.")
    described = frame.iloc[:, [n for n in range(width) if n not in secret]] if secret else frame
    if described.shape[1]:
        sampled = rows > SAMPLE_ROWS
        stats = (described.iloc[sample_positions(rows, SAMPLE_ROWS, 0)] if sampled else described).describe().T
        where = f" of a seeded random sample of {SAMPLE_ROWS:,} rows" if sampled else ""
        table = markdown_table(list(stats.columns), stats.index, stats.values.tolist(), _TABLE_WIDTH, corner="column")
        parts.append(f"describe(){where}:\n{table}")
    if look.counts_of is not None:
        values = frame[look.counts_of]
        sampled = rows > COUNTED_ROWS
        counts = (values.iloc[sample_positions(rows, SAMPLE_ROWS, 0)] if sampled else values).value_counts(dropna=False)
        top = counts.iloc[:VALUE_COUNTS]
        more = f"\n[… {len(counts) - len(top):,} more values]" if len(counts) > len(top) else ""
        table = markdown_table(["count"], top.index, [[n] for n in top.tolist()], _TABLE_WIDTH, corner="value")
        scope = f"of a seeded random sample of {SAMPLE_ROWS:,} rows, " if sampled else ""
        parts.append(f"value counts of `{label_text(look.counts_of)}` ({scope}{len(counts):,} distinct values, missing included):\n{table}{more}")
    return "\n\n".join(parts)


def _array(array: Any, look: _Look) -> str:
    numpy = sys.modules["numpy"]  # loaded already: the value is one of its arrays
    parts = [_array_header(array)] + ([f"{array.size:,} elements"] if look.detail == FULL else [])
    if array.size and array.dtype.kind in "biuf" and array.size <= STATS_ELEMENTS:
        values = array.astype(float) if array.dtype.kind == "b" else array
        stats = {"min": numpy.nanmin, "max": numpy.nanmax, "mean": numpy.nanmean} | ({"std": numpy.nanstd} if look.detail == FULL else {})
        parts += [f"{label} {float(statistic(values)):.6g}" for label, statistic in stats.items()]
        if look.detail == FULL and array.dtype.kind == "f":
            parts.append(f"NaN {int(numpy.isnan(array).sum()):,}")
    if look.detail != BRIEF and array.size:
        shown = (10, 6, 3)[look.detail]
        parts.append(f"first values {text_of(array.flat[:shown].tolist(), 400 if look.detail == FULL else 120)}")
    return ", ".join(parts)


# -- built-in values and everything else -------------------------------------------------


def _mapping(mapping: Mapping[Any, Any], look: _Look) -> str:
    items = list(islice(mapping.items(), (50, 12, 6, 0)[look.detail]))
    text = f"{type_name(mapping)} of {len(mapping):,} keys"
    if items:
        more = ", …" if len(mapping) > len(items) else ""
        text += " {" + ", ".join(f"{text_of(key, 30)}: {type_name(value)}" for key, value in items) + more + "}"
    if look.detail != FULL or not items:
        return text
    lines = [text, "first items:"]
    for key, value in items[:5]:
        hidden = not look.reveal and type(key) is str and is_secret_name(key)
        shown = WITHHELD if hidden else text_of(value, 160, reveal=look.reveal) or f"<{type_name(value)}>"
        lines.append(f"- {text_of(key, 40)}: {type_name(value)} {shown}")
    return "\n".join(lines)


def _collection(items: Any, look: _Look) -> str:
    width = 120 if look.detail == FULL else 40
    first = [text_of(item, width, reveal=look.reveal) or f"<{type_name(item)}>" for item in islice(items, (10, 5, 3, 0)[look.detail])]
    text = f"{type_name(items)} of {len(items):,} items"
    if first:
        text += ": " + ", ".join(first) + (", …" if len(items) > len(first) else "")
    if look.detail != FULL or not first:
        return text
    sampled = list(islice(items, 1000))  # the types of a bounded look: a list of 10,000,000 is not walked
    scope = "" if len(items) <= len(sampled) else f" (first {len(sampled):,})"
    kinds = Counter(type_name(item) for item in sampled).most_common(8)
    lines = [text, f"element types{scope}: " + ", ".join(f"{kind} {n:,}" for kind, n in kinds)]
    if len(items) > len(first) and type(items) in (list, tuple, range):
        lines.append("last items: " + ", ".join(text_of(item, width, reveal=look.reveal) or f"<{type_name(item)}>" for item in items[-3:]))
    return "\n".join(lines)


def _callable(value: Any, look: _Look) -> str:
    kind = "class" if issubclass(type(value), type) else "function"
    try:
        signature = str(inspect.signature(value))
    except (TypeError, ValueError):
        signature = "(…)"
    text = f"{kind} {getattr(value, '__qualname__', type_name(value))}{signature}"
    doc = inspect.getdoc(value) if look.detail != BRIEF else None
    return text + (f": {doc.strip().splitlines()[0][:160]}" if doc else "")


def _other(value: Any, look: _Look) -> str:
    """Any other object: its type and its own text, never indexed or iterated (it may be a ``shelve`` or a lazy proxy)."""
    if look.detail == BRIEF:
        return type_name(value)
    if "repr" not in look.counted:  # made once for every level of detail: each try may take REPR_SECONDS
        shown = text_of(value, max(160, look.preview), reveal=look.reveal)
        look.counted["repr"] = redact(shown) if shown and not look.reveal else shown  # before any cut below
    shown = look.counted["repr"]
    if not shown:
        return type_name(value) + (": (its repr failed or took too long)" if look.detail == FULL else "")
    if look.detail == SHORTER and len(shown) > 60:
        shown = shown[:59] + "…"
    return f"{type_name(value)}: {shown}"
