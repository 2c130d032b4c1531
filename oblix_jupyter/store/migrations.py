"""Numbered upgrades of the stored session shape, applied when an older session is read.

Every session document carries ``schema_version``. A document older than
``SCHEMA_VERSION`` is brought up to date by the migrations after its version, in order,
as it is read (the next write stores the upgraded form), so a change to the stored
shape never strands a user's sessions; the seed's fields stay as they are. A document
newer than this code is refused with a message that says to upgrade, rather than read
wrongly. To change the shape: add ``_to_N`` below and register it in ``MIGRATIONS``.

A migration may add or rename fields; one that changes messages must replace the
message dicts rather than change them in place (the storage re-encodes only message
objects it has not written before, ``written.dump_tables``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import NewerSchema

FIELD = "schema_version"


def _to_1(document: dict[str, Any]) -> None:
    """Sessions written before versions were recorded (and the original SDK's): the optional fields made explicit."""
    document.setdefault("title", "Imported session")
    document.setdefault("context", {})
    document.setdefault("model", None)
    document.setdefault("metadata", {})


MIGRATIONS: dict[int, Callable[[dict[str, Any]], None]] = {1: _to_1}
SCHEMA_VERSION = max(MIGRATIONS)


def version_of(document: dict[str, Any]) -> int:
    value = document.get(FIELD, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def upgrade(document: dict[str, Any]) -> bool:
    """Bring ``document`` to ``SCHEMA_VERSION`` in place; False if it is newer than this code can read."""
    version = version_of(document)
    if version > SCHEMA_VERSION:
        return False
    for number in range(version + 1, SCHEMA_VERSION + 1):
        MIGRATIONS[number](document)
        document[FIELD] = number
    return True


def readable(document: dict[str, Any], where: str) -> dict[str, Any]:
    """``document`` upgraded in place and returned; ``NewerSchema`` naming ``where`` if this code would read it wrongly.

    The one check of every store's reads and of imports, so a newer session is refused alike everywhere.
    """
    if not upgrade(document):
        raise NewerSchema(where, version_of(document), SCHEMA_VERSION)
    return document
