"""Which session each notebook continues: a small TinyDB table of notebook key → session id.

The key is whatever identifies a notebook (its path, usually; see ``kernel.binding``).
Writes are locked like session writes; an unreadable file loses bindings, never
sessions, and is moved aside on the next write rather than overwritten.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tinydb import Query, TinyDB

from ..errors import CorruptSession
from .shape import now_iso, stamp, validate_session_id
from .storage import LockedAtomicStorage


class Bindings:
    """The notebook → session table of one store."""

    def __init__(self, base_dir: str, locks_dir: str, lock_timeout: float, report: Callable[[CorruptSession], None]) -> None:
        """``report`` is told of an unreadable bindings file (the store lists it among its problems)."""
        self.path = os.path.join(base_dir, ".bindings.json")
        self._lock = os.path.join(locks_dir, "bindings.lock")
        self._lock_timeout = lock_timeout
        self._report = report

    @contextmanager
    def _table(self, write: bool) -> Iterator[TinyDB]:
        lock = self._lock if write else None
        with TinyDB(self.path, storage=LockedAtomicStorage, lock_path=lock, lock_timeout=self._lock_timeout) as db:
            yield db.table("bindings")

    def bind(self, key: str, session_id: str) -> None:
        """Bind a notebook (any stable identifier of it, usually its path) to a session.

        An unreadable bindings file is moved aside (kept for inspection), not overwritten.
        """
        validate_session_id(session_id)
        if not key:
            raise ValueError("a binding needs a non-empty notebook key")
        row = {"notebook": key, "session_id": session_id, "updated_at": now_iso()}
        try:
            with self._table(write=True) as table:
                table.upsert(row, Query().notebook == key)
        except CorruptSession as problem:
            self._report(problem)
            os.replace(problem.path, f"{problem.path}.corrupt-{stamp(now_iso())}")
            with self._table(write=True) as table:
                table.upsert(row, Query().notebook == key)

    def unbind(self, key: str) -> None:
        with self._table(write=True) as table:
            table.remove(Query().notebook == key)

    def unbind_session(self, session_id: str) -> None:
        """Drop every binding to a session being deleted; the file is rewritten only if one points to it.

        An unreadable bindings file is reported and left alone: it names no session the
        store can show, and the next ``bind`` moves it aside.
        """
        if session_id not in self.all().values():
            return
        with self._table(write=True) as table:
            table.remove(Query().session_id == session_id)

    def all(self) -> dict[str, str]:
        """Every notebook key and the session bound to it."""
        try:
            with self._table(write=False) as table:
                return {row["notebook"]: row["session_id"] for row in table.all()}
        except CorruptSession as problem:
            self._report(problem)  # an unreadable bindings file only loses bindings, never sessions
            return {}
