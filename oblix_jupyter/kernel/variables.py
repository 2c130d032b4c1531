"""Short, capped descriptions of the notebook variables a prompt refers to.

A variable is described when ``--vars`` names it, the prompt writes it as ``{name}``, or
its name appears in the prompt as a word. Each description fits ``cap_tokens``: a
DataFrame gives its shape, dtypes, missing values and first rows as a Markdown table; an
array its shape, dtype and range; containers their length and first items; functions
their signature. pandas and NumPy are recognised by the type's module, never imported.
Secret-looking names are left out unless named explicitly, and a ``repr`` that raises
or hangs gives the type alone: the user's objects must never break or stall a turn.
"""

from __future__ import annotations

import inspect
import re
import sys
import threading
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..context.inputs import VariableSummary
from ..context.relevance import truncate_to_tokens
from ..errors import is_secret_name

REPR_SECONDS = 0.5
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
        if isinstance(namespace[name], types.ModuleType):
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
    """Capped summaries of the variables ``prompt`` refers to (see the module docstring)."""
    count = count or approximate_tokens
    explicit = set(named)
    summaries = []
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
        text = describe(name, value, cap_tokens, count)
        summaries.append(VariableSummary(name, text, count(text), warning))
    return summaries


def describe(name: str, value: Any, cap_tokens: int, count: Callable[[str], int]) -> str:
    """The richest description of ``value`` that fits ``cap_tokens``, cut with ``[…]`` as a last resort."""
    text = ""
    counted: dict[str, Any] = {}  # what every level of detail needs once: a frame's missing values (70 ms on 1M rows of text)
    for detail in (0, 1, 2):
        try:
            text = f"`{name}`: " + _describe(value, detail, counted)
        except Exception:  # a broken __len__, property or dtype: say what we safely can
            text = f"`{name}`: {type_name(value)}"
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


def _describe(value: Any, detail: int, counted: dict[str, Any]) -> str:
    if is_type(value, "pandas", "DataFrame"):
        return _dataframe(value, detail, counted)
    if is_type(value, "pandas", "Series"):
        return _series(value, detail, counted)
    if is_type(value, "numpy", "ndarray"):
        return _array(value, detail)
    if isinstance(value, (bool, int, float, complex, type(None))):
        return f"{type_name(value)} = {value!r}"
    if isinstance(value, (str, bytes)):
        preview = (200, 80, 0)[detail]
        head = f"{type_name(value)} of length {len(value)}"
        return head + (f": {_short(value, preview)}" if preview else "")
    if isinstance(value, Mapping):
        return _mapping(value, detail)
    if isinstance(value, (list, tuple, set, frozenset)):
        return _collection(value, detail)
    if isinstance(value, types.ModuleType):
        return f"module {value.__name__}"
    if inspect.isclass(value) or callable(value) and inspect.isroutine(value):
        return _callable(value, detail)
    shown = safe_repr(value, (160, 60, 0)[detail]) if detail < 2 else None
    return type_name(value) + (f": {shown}" if shown else "")


def _short(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else safe_repr(value, limit) or f"<{type_name(value)}>"
    return repr(text[:limit]) + ("…" if len(text) > limit else "") if isinstance(value, str) else text


def safe_repr(value: Any, limit: int) -> str | None:
    """``repr(value)`` cut to ``limit`` characters, or None if it raises or takes longer than ``REPR_SECONDS``."""
    result: list[str] = []

    def run() -> None:
        try:
            result.append(repr(value))
        except Exception:
            pass

    worker = threading.Thread(target=run, name="oblix-repr", daemon=True)  # a hung repr is abandoned, not waited for
    worker.start()
    worker.join(REPR_SECONDS)
    if not result:
        return None
    text = result[0]
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def _dataframe(frame: Any, detail: int, counted: dict[str, Any]) -> str:
    rows, columns = frame.shape
    limit = (12, 6, 3)[detail]
    names = list(frame.columns[:limit])
    more = f", … {columns - limit} more" if columns > limit else ""
    lines = [f"pandas DataFrame, {rows} rows × {columns} columns"]
    lines.append("dtypes: " + ", ".join(f"{c} {frame.dtypes[c]}" for c in names) + more)
    if "missing" not in counted:
        counted["missing"] = frame.isna().sum()
    missing = counted["missing"]
    holes = [(c, int(missing[c])) for c in frame.columns if int(missing[c])]
    lines.append("missing values: " + (", ".join(f"{c} {n}" for c, n in holes[:limit]) if holes else "none"))
    if detail < 2 and rows:
        head = frame.iloc[: (5, 3)[detail], : (8, 5)[detail]]
        lines.append("head():\n" + _markdown_table([str(c) for c in head.columns], head.index, head.values.tolist()))
    return "\n".join(lines)


def _series(series: Any, detail: int, counted: dict[str, Any]) -> str:
    if "missing" not in counted:
        counted["missing"] = int(series.isna().sum())
    missing = counted["missing"]
    lines = [f"pandas Series {series.name!r}, length {len(series)}, dtype {series.dtype}, {missing} missing"]
    if series.dtype.kind in "biuf" and len(series):
        lines.append(f"min {float(series.min()):.6g}, max {float(series.max()):.6g}, mean {float(series.mean()):.6g}")
    if detail < 2 and len(series):
        head = series.iloc[: (5, 3)[detail]]
        lines.append("head():\n" + _markdown_table([str(series.name)], head.index, [[v] for v in head.tolist()]))
    return "\n".join(lines)


def _markdown_table(columns: list[str], index: Any, rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        text = str(value).replace("|", "\\|").replace("\n", " ")
        return text if len(text) <= 24 else text[:23] + "…"

    lines = ["| | " + " | ".join(cell(c) for c in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += ["| " + cell(label) + " | " + " | ".join(cell(v) for v in row) + " |" for label, row in zip(index, rows)]
    return "\n".join(lines)


def _array(array: Any, detail: int) -> str:
    text = f"numpy array, shape {tuple(array.shape)}, dtype {array.dtype}"
    numpy = sys.modules.get("numpy")
    if numpy is not None and array.size and array.dtype.kind in "biuf" and array.size <= 50_000_000:
        low, high, mean = numpy.nanmin(array), numpy.nanmax(array), numpy.nanmean(array)
        text += f", min {low:.6g}, max {high:.6g}, mean {mean:.6g}"
    if detail < 2 and array.size:
        flat = array.reshape(-1)[: (6, 3)[detail]]
        text += f", first values {safe_repr(flat.tolist(), 120)}"
    return text


def _collection(items: Any, detail: int) -> str:
    shown = (5, 3, 0)[detail]
    text = f"{type_name(items)} of {len(items)} items"
    if shown and len(items):
        first = [safe_repr(item, 40) or f"<{type_name(item)}>" for item, _ in zip(items, range(shown))]
        text += ": " + ", ".join(first) + (", …" if len(items) > shown else "")
    return text


def _mapping(mapping: Mapping[Any, Any], detail: int) -> str:
    shown = (12, 6, 0)[detail]
    text = f"{type_name(mapping)} of {len(mapping)} keys"
    if shown and len(mapping):
        keys = [key for key, _ in zip(mapping, range(shown))]
        parts = [f"{safe_repr(key, 30)}: {type_name(mapping[key])}" for key in keys]
        text += " {" + ", ".join(parts) + (", …" if len(mapping) > shown else "") + "}"
    return text


def _callable(value: Any, detail: int) -> str:
    kind = "class" if inspect.isclass(value) else "function"
    try:
        signature = str(inspect.signature(value))
    except (TypeError, ValueError):
        signature = "(…)"
    text = f"{kind} {getattr(value, '__qualname__', type_name(value))}{signature}"
    doc = inspect.getdoc(value) if detail < 2 else None
    if doc:
        text += f": {doc.strip().splitlines()[0][:160]}"
    return text
