"""Sessions in and out of files, the format chosen by the file's extension.

The one implementation behind ``oblix export``/``oblix import`` and the magics'
``%oblix export``/``%oblix import``. ``.json`` is the seed's session shape, which the
store already writes and reads; ``.ipynb`` is a notebook with one Markdown cell per
message whose metadata carries everything else, so importing it restores the session
exactly; ``.md`` is a transcript for people and cannot be imported back.

nbformat is imported only when a notebook is read or written: importing it takes
seconds (its JSON-schema validator), which the other formats should not pay.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import (
    ExportFormatError,
    ImportFormatError,
    InvalidSessionId,
)
from ..render import inert_markdown, message_header, transcript
from .files import atomic_write_bytes, read_import_file
from .shape import check_session_shape

if TYPE_CHECKING:
    from .base import SessionStore

EXPORT_FORMATS = (".ipynb", ".md", ".json")
IMPORT_FORMATS = (".ipynb", ".json")
METADATA_KEY = "oblix"  # notebook and cell metadata key; other tools keep their own keys
NOTEBOOK_LAYOUT = 1  # bumped if the layout of our notebook metadata ever changes


def export_session(store: SessionStore, session_id: str, path: str | os.PathLike[str]) -> str:
    """Write the session to ``path`` in the format its extension names; returns the absolute path."""
    path = os.path.abspath(os.fspath(path))
    extension = _extension(path)
    if extension not in EXPORT_FORMATS:
        raise ExportFormatError(f"Cannot export to {extension or 'a file without extension'}: use {', '.join(EXPORT_FORMATS)}.")
    if extension == ".json":
        store.export_session(session_id, path)
        return path
    session = store.get_session(session_id)
    text = notebook_text(session) if extension == ".ipynb" else transcript(session)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write_bytes(path, text.encode("utf-8"))
    return path


def import_session(store: SessionStore, path: str | os.PathLike[str], keep_id: bool = False) -> str:
    """Store the session in ``path`` (.json or our .ipynb) and return its id.

    The session gets a new id unless ``keep_id`` is set and its own id is free in this
    store. A malformed file raises ``ImportFormatError`` saying what is wrong, and
    nothing is stored.
    """
    path = os.fspath(path)
    extension = _extension(path)
    if extension not in IMPORT_FORMATS:
        raise ImportFormatError(f"{path}: cannot import {extension or 'a file without extension'}; use {' or '.join(IMPORT_FORMATS)}.")
    add: Callable[..., str]
    if extension == ".json":
        add = functools.partial(store.import_session, path)
    else:
        add = functools.partial(store.add_session, read_notebook(path))
    if keep_id:
        try:
            return add(new_id=False)
        except (ImportFormatError, InvalidSessionId):
            # The id is taken or is not one this store could issue, so a new one is used;
            # a file that is malformed fails again, with the same message, below.
            pass
    return add(new_id=True)


# -- notebooks ----------------------------------------------------------------------


def notebook_text(session: dict[str, Any]) -> str:
    """The session as an nbformat v4 notebook (JSON text), unsigned, so Jupyter opens it untrusted.

    A cell shows its message through ``inert_markdown``; where that changed the text,
    the message as written is kept in the cell's metadata, so importing restores it.
    """
    import nbformat
    from nbformat import v4

    cells = []
    for message in session["messages"]:
        shown = inert_markdown(message["content"])
        fields = {key: value for key, value in message.items() if key != "content" or value != shown}
        cells.append(v4.new_markdown_cell(f"{message_header(message)}\n\n{shown}", metadata={METADATA_KEY: fields}))
    header = {key: value for key, value in session.items() if key != "messages"}
    notebook = v4.new_notebook(cells=cells, metadata={METADATA_KEY: {"layout": NOTEBOOK_LAYOUT, "session": header}})
    return nbformat.writes(notebook) + "\n"  # as Jupyter saves them


def read_notebook(path: str) -> dict[str, Any]:
    """The session held by a notebook we exported, checked but not stored.

    Cells without our metadata (added by hand in Jupyter) are not part of the
    conversation and are skipped; each message's text is its cell minus the header.
    """
    notebook = read_import_file(path)
    if not isinstance(notebook, dict) or notebook.get("nbformat") != 4:
        raise ImportFormatError(f"{path}: not an nbformat v4 notebook.")
    from nbformat import ValidationError
    from nbformat.validator import get_validator

    try:
        # The v4 schema we write, checked directly: nbformat.validate() first rewrites the
        # dict in place and fails with a bare TypeError on some malformed shapes.
        get_validator(version=4).validate(notebook)
    except ValidationError as error:
        raise ImportFormatError(f"{path}: not a valid notebook ({error.message}).") from None
    ours = notebook["metadata"].get(METADATA_KEY)
    if not isinstance(ours, dict) or not isinstance(ours.get("session"), dict):
        raise ImportFormatError(f"{path}: this notebook holds no oblix session (no '{METADATA_KEY}' notebook metadata).")
    messages = []
    for number, cell in enumerate(notebook["cells"], start=1):
        fields = cell["metadata"].get(METADATA_KEY)
        if fields is None:
            continue
        if cell["cell_type"] != "markdown" or not isinstance(fields, dict):
            raise ImportFormatError(f"{path}: cell {number} has oblix metadata but is not one of our message cells.")
        source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        messages.append({"content": source.partition("\n\n")[2], **fields})  # fields keep a text the cell escaped
    return check_session_shape({**ours["session"], "messages": messages}, path)


def _extension(path: str) -> str:
    return os.path.splitext(path)[1].lower()
