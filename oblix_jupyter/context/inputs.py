"""What the selector is given besides the conversation: plain values, built by the kernel layer.

The selector is a pure function of its arguments; these are the arguments that come
from the notebook (``kernel.variables``, ``kernel.state`` make them), kept here so the
selector needs nothing of the kernel's to read them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VariableSummary:
    """One variable as the model will see it; ``excluded`` ones are only reported, never sent."""

    name: str
    text: str
    tokens: int
    warning: str | None = None
    excluded: bool = False


@dataclass(frozen=True)
class NotebookContext:
    """The notebook's recent state, as the selector may include it.

    ``error`` is the last exception with its trimmed traceback; ``cells`` the sources of
    the last executed cells, oldest first (the asking cell itself left out). The selector
    includes them when the prompt refers to them (error, failed, "this cell", "above"...)
    or when ``force_error`` / ``force_cells`` say so (``--error``, ``--cells N``).
    """

    error: str | None = None
    cells: tuple[str, ...] = ()
    force_error: bool = False
    force_cells: int = 0
    error_cap_tokens: int = 600
    cell_cap_tokens: int = 300
