"""What just happened in the notebook: the last exception and the last executed cells.

The magics gather it from the IPython shell with ``gather_notebook_context`` and pass
it to the selector, which stays pure and decides whether the prompt asks about it.
Tracebacks are trimmed to the notebook's own frames: the library frames below them are
long, rarely the cause, and would crowd the model's window.
"""

from __future__ import annotations

import re
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from ..context.inputs import NotebookContext

DEFAULT_CELLS = 3
# Cells and interactive code: IPython 7 ("<ipython-input-3-...>") and ipykernel >= 6 ("/tmp/ipykernel_123/456.py").
_NOTEBOOK_FILE = re.compile(r"^<ipython-input-\d+-[0-9a-f]+>$|[/\\]ipykernel_\d+[/\\]\d+\.py$|^<cell line: \d+>$")


def is_notebook_frame(filename: str) -> bool:
    return bool(_NOTEBOOK_FILE.search(filename))


def format_error(error: BaseException | None, tb: Any = None, max_frames: int = 8) -> str | None:
    """The exception as Python prints it, keeping only frames of notebook cells (and the last frame)."""
    if error is None:
        return None
    frames = traceback.extract_tb(tb if tb is not None else error.__traceback__)
    own = [index for index, frame in enumerate(frames) if is_notebook_frame(frame.filename)]
    keep = set(own[-max_frames:])
    if frames:
        keep.add(len(frames) - 1)  # where it was raised, even inside a library
    lines = ["Traceback (most recent call last):"]
    skipped = False
    for index, frame in enumerate(frames):
        if index not in keep:
            skipped = True
            continue
        if skipped:
            lines.append("  [… library frames omitted …]")
            skipped = False
        where = "cell" if is_notebook_frame(frame.filename) else frame.filename
        lines.append(f'  File "{where}", line {frame.lineno}, in {frame.name}')
        if frame.line:
            lines.append(f"    {frame.line.strip()}")
    lines.extend(line.rstrip("\n") for line in traceback.format_exception_only(type(error), error))
    return "\n".join(lines)


def gather_notebook_context(
    shell: Any, cells: int = DEFAULT_CELLS, force_error: bool = False, force_cells: int = 0
) -> NotebookContext:
    """Read the last exception and the last ``cells`` inputs from an IPython shell (anything with ``user_ns``)."""
    namespace = getattr(shell, "user_ns", {}) or {}
    error = getattr(sys, "last_value", None)
    text = format_error(error, getattr(sys, "last_traceback", None)) if error is not None else None
    history: Sequence[str] = namespace.get("In") or []
    wanted = max(cells, force_cells)
    sources = [source for source in list(history)[1:] if source and source.strip()]  # In[0] is always empty
    sources = sources[:-1]  # the cell that is asking
    return NotebookContext(
        error=text,
        cells=tuple(sources[-wanted:]) if wanted else (),
        force_error=force_error,
        force_cells=force_cells,
    )
