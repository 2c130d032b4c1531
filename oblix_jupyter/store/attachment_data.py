"""Attachments' bytes as a session file carries them: base64 beside each entry, checked against its id on the way in.

A message names its images by entry (``{"id", "mime", "width", "height", "label",
"bytes"}``) and the store keeps their bytes apart (``SessionStore.save_attachment``). A
file that travels (``.json``, ``.ipynb``) carries the bytes too, as ``"data"``; a file is
untrusted, so on the way in every id is recomputed from the bytes the file gives
(a file cannot make an entry name bytes that are not its own), only PNG and JPEG are
accepted, and all of it is checked before anything is stored. The ``"data"`` key never
reaches a stored session.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ImportFormatError

IMAGE_TYPES = {"image/png": "png", "image/jpeg": "jpg"}  # what an attachment may be, with the extension its file gets


def attachments_of(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The attachment entries of a stored message whose bytes the store keeps ([] for none).

    An entry without an ``id`` names an image whose bytes could not be kept (the
    database was away when its question was written: ``"withheld"`` says so); it travels
    as it is, with nothing to read.
    """
    entries = message.get("attachments")
    return [entry for entry in entries if isinstance(entry, dict) and "id" in entry] if isinstance(entries, list) else []


def as_text(data: bytes) -> str:
    """Bytes as the base64 text a file carries them in."""
    return base64.b64encode(data).decode("ascii")


def with_attachment_data(session: Mapping[str, Any], read: Callable[[str], bytes]) -> dict[str, Any]:
    """A copy of ``session`` whose attachment entries carry their bytes as ``"data"`` (``read``: the bytes of an id).

    A copy, message by message: a store may hand out the dicts it caches.
    """
    messages = [
        {**message, "attachments": [{**entry, "data": as_text(read(entry["id"]))} if "id" in entry else entry for entry in message["attachments"]]}
        if attachments_of(message)
        else message
        for message in session["messages"]
    ]
    return {**session, "messages": messages}


def take_attachment_data(session: dict[str, Any], where: str, limit: int, kept: Mapping[str, bytes] | None = None) -> dict[str, bytes]:
    """Check every attachment entry of ``session``'s messages, take its ``"data"`` out, and return the bytes by id.

    An entry's bytes are its ``"data"`` (base64, at most ``limit`` bytes once decoded) or,
    for a copy within a store, ``kept[id]``. ``session`` is changed in place (no entry
    keeps ``"data"``; ``"bytes"`` is set to the real size), so give it a copy.
    """
    found: dict[str, bytes] = {}
    for number, message in enumerate(session["messages"], start=1):
        entries = message.get("attachments")
        if entries is None:
            continue
        name = f"{where}: message {number} ({message.get('id', 'no id')})"
        if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
            raise ImportFormatError(f"{name} has 'attachments' that are not a list of objects.")
        for entry in entries:
            if "id" not in entry and "data" not in entry:  # named only: its bytes were never kept
                if not isinstance(entry.get("label", ""), str) or not isinstance(entry.get("withheld", ""), str):
                    raise ImportFormatError(f"{name}: an attachment's label or reason is not text.")
                continue
            data = _entry_bytes(entry, name, limit, kept or {})
            if hashlib.sha256(data).hexdigest() != entry.get("id"):
                raise ImportFormatError(f"{name}: attachment {str(entry.get('id'))[:80]!r} does not match its data (an id is the SHA-256 of its bytes).")
            entry["bytes"] = len(data)
            found[entry["id"]] = data
    return found


def _entry_bytes(entry: dict[str, Any], name: str, limit: int, kept: Mapping[str, bytes]) -> bytes:
    if entry.get("mime") not in IMAGE_TYPES:
        raise ImportFormatError(f"{name}: an attachment of type {str(entry.get('mime'))[:80]!r}; only {' and '.join(IMAGE_TYPES)} are.")
    if not isinstance(entry.get("label", ""), str) or not all(
        entry.get(field) is None or (type(entry[field]) is int and entry[field] >= 0) for field in ("width", "height", "bytes")
    ):
        raise ImportFormatError(f"{name}: an attachment's label, size or pixel size is not of its type.")
    if "data" not in entry:
        if isinstance(entry.get("id"), str) and entry["id"] in kept:
            return kept[entry["id"]]
        raise ImportFormatError(f"{name}: the file holds no data for attachment {str(entry.get('id'))[:80]!r}.")
    text = entry.pop("data")
    # Checked before decoding, so that a huge string costs no second copy; 4 characters carry 3 bytes.
    if not isinstance(text, str) or not text or len(text) > 4 * -(-limit // 3):
        raise ImportFormatError(f"{name}: an attachment's data is not 1 to {limit:,} bytes in base64.")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ImportFormatError(f"{name}: an attachment's data is not valid base64.") from None
    if not data or len(data) > limit:
        raise ImportFormatError(f"{name}: an attachment's data is not 1 to {limit:,} bytes in base64.")
    return data
