"""Sessions in and out of files, the format chosen by the file's extension.

The one implementation behind ``oblix export``/``oblix import`` and the magics'
``%oblix export``/``%oblix import``. ``.json`` is the seed's session shape, which the
store already writes and reads; ``.ipynb`` is a notebook with one Markdown cell per
message whose metadata carries everything else, so importing it restores the session
exactly; ``.md`` is a transcript for people and cannot be imported back.

A message's images travel with it: in ``.json`` as base64 in each attachment entry, in a
notebook as the cell's own attachments (shown in the cell, so Jupyter displays them),
beside a ``.md`` as files in ``<name>_files/``. Their labels come from variable and cell
names, so they are escaped wherever they become Markdown.

nbformat is imported only when a notebook is read or written: importing it takes
seconds (its JSON-schema validator), which the other formats should not pay.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Mapping
from urllib.parse import quote
from typing import TYPE_CHECKING, Any

from ..errors import (
    ExportFormatError,
    ImportFormatError,
    InvalidSessionId,
)
from ..render import inert_markdown, message_header, transcript
from .attachment_data import IMAGE_TYPES, attachments_of, with_attachment_data
from .files import atomic_write_bytes, ensure_private_dir, read_import_file
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
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if extension == ".ipynb":
        text = notebook_text(with_attachment_data(session, lambda attachment: store.read_attachment(session_id, attachment)))
    else:
        text = _transcript_with_images(store, session, path)
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
    ``session`` is as ``with_attachment_data`` gives it: each image's bytes in its entry,
    which become the cell's attachments, shown after its text.
    """
    import nbformat
    from nbformat import v4

    cells = []
    for message in session["messages"]:
        entries = attachments_of(message)  # each with its "data", which goes to the cell's attachments
        images = [f"![{alt_text(entry.get('label'))}](attachment:{_file_name(entry)})" for entry in entries]
        shown = "\n\n".join([inert_markdown(message["content"]), *images])
        fields = {key: value for key, value in message.items() if key != "content" or value != shown}
        extra: dict[str, Any] = {}
        if entries:
            fields["attachments"] = [{key: value for key, value in entry.items() if key != "data"} for entry in entries]
            extra["attachments"] = {_file_name(entry): {entry["mime"]: entry["data"]} for entry in entries}
        cells.append(v4.new_markdown_cell(f"{message_header(message)}\n\n{shown}", metadata={METADATA_KEY: fields}, **extra))
    header = {key: value for key, value in session.items() if key != "messages"}
    notebook = v4.new_notebook(cells=cells, metadata={METADATA_KEY: {"layout": NOTEBOOK_LAYOUT, "session": header}})
    return nbformat.writes(notebook) + "\n"  # as Jupyter saves them


def read_notebook(path: str) -> dict[str, Any]:
    """The session held by a notebook we exported, checked but not stored.

    Cells without our metadata (added by hand in Jupyter) are not part of the
    conversation and are skipped; each message's text is its cell minus the header.
    Each attachment's bytes are the cell attachment of its name, handed on as the entry's
    ``"data"`` for ``add_session`` to check against its id.
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
        if isinstance(fields.get("attachments"), list):
            fields = {**fields, "attachments": [_with_cell_data(entry, cell, f"{path}: cell {number}") for entry in fields["attachments"]]}
        messages.append({"content": source.partition("\n\n")[2], **fields})  # fields keep a text the cell escaped
    return check_session_shape({**ours["session"], "messages": messages}, path)


def _with_cell_data(entry: Any, cell: Mapping[str, Any], where: str) -> Any:
    """An attachment entry with the base64 of the cell attachment it names as ``"data"``; an entry that names none, as it is."""
    if not isinstance(entry, dict) or "id" not in entry or entry.get("mime") not in IMAGE_TYPES:
        return entry  # add_session refuses it, saying why, or keeps an image named only
    name = _file_name(entry)
    bundle = (cell.get("attachments") or {}).get(name)
    if bundle is None:
        return entry
    if list(bundle) != [entry["mime"]]:
        types = ", ".join(str(kind)[:80] for kind in bundle)
        raise ImportFormatError(f"{where}: attachment {name[:120]!r} is {types or 'empty'}, where only {entry['mime']} may be.")
    data = bundle[entry["mime"]]
    return {**entry, "data": "".join(data) if isinstance(data, list) else data}


# -- Markdown -----------------------------------------------------------------------------

_MARKDOWN_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")  # every ASCII punctuation character, which a backslash makes literal
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def alt_text(label: Any) -> str:
    """An image's label (from a variable or cell: untrusted) as Markdown alt text that stays text.

    One line (a blank line would end the image and start Markdown of the label's own),
    each ASCII punctuation character backslash-escaped (CommonMark then reads it as
    itself: no ``]`` closes the alt text, no ``<`` opens HTML, no ``&`` an entity).
    """
    words = " ".join(_CONTROL.sub(" ", str(label or "")).split())[:200] or "image"
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", words)


def _transcript_with_images(store: SessionStore, session: dict[str, Any], path: str) -> str:
    """The ``.md`` transcript, each message's images written beside it (``<name>_files/<id>.png``) and shown after its text.

    Files are written before the transcript, which never links one that is not there.
    """
    folder = f"{os.path.splitext(os.path.basename(path))[0]}_files"
    directory = os.path.join(os.path.dirname(path), folder)
    entries = [entry for message in session["messages"] for entry in attachments_of(message)]
    if entries:
        ensure_private_dir(directory)
    for entry in entries:
        atomic_write_bytes(os.path.join(directory, _file_name(entry)), store.read_attachment(session["id"], entry["id"]))

    def images(message: Mapping[str, Any]) -> str:
        entries = attachments_of(message)
        return "\n\n".join(f"![{alt_text(entry.get('label'))}]({quote(f'{folder}/{_file_name(entry)}')})" for entry in entries)

    return transcript(session, after=images)


def _file_name(entry: Mapping[str, Any]) -> str:
    """An attachment's file name, in a notebook cell or beside a ``.md``: its id (64 hex digits, checked by the store) and type."""
    return f"{entry['id']}.{IMAGE_TYPES[entry['mime']]}"


def _extension(path: str) -> str:
    return os.path.splitext(path)[1].lower()
