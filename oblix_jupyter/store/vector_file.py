"""The embedding-vector cache: one SQLite file of vectors keyed by message content, and the sessions that use them.

A message copied, imported or re-created in another session has the same content, so
its vectors are kept once under a key the caller derives from that content (opaque
here) and shared: ``uses`` records which session holds which key, and forgetting a
session removes its uses and every vector no other session uses. ``secure_delete``
overwrites what is removed, so a deleted conversation leaves no vector on disk.

It is a cache: whatever goes wrong with the file (damaged, unreadable, locked too long)
costs embedding again, never a turn. Reads then find nothing and writes are skipped, and
a file that is not a database (any more) is replaced by an empty one.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

from ..errors import StoreBusy
from .files import FILE_MODE, ensure_private_dir, remove_file

FILE_NAME = "vectors.sqlite3"
_KEYS_PER_QUERY = 500  # bound parameters of one IN (...): below SQLite's oldest limit of 999
_DAMAGED = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
_BUSY = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS vectors (
    model TEXT NOT NULL, key TEXT NOT NULL, payload BLOB NOT NULL, PRIMARY KEY (model, key)
);
CREATE TABLE IF NOT EXISTS uses (
    session_id TEXT NOT NULL, model TEXT NOT NULL, key TEXT NOT NULL, PRIMARY KEY (session_id, model, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS uses_of_vector ON uses (model, key);
"""

Result = TypeVar("Result")


class VectorFile:
    """Vectors by (model, content key) in ``<directory>/vectors.sqlite3``, and which sessions use each.

    Threads each get their own connection (SQLite connections are not to be shared
    between threads) and processes coordinate through SQLite's own locks (WAL journal,
    so readers never wait for a writer). Nothing is opened before the first call.
    """

    def __init__(self, directory: str, timeout: float = 30.0) -> None:
        self.directory = directory
        self.path = os.path.join(directory, FILE_NAME)
        self.timeout = timeout
        self._local = threading.local()
        self._replacing = threading.Lock()
        self._legacy_removed = False

    def get(self, model: str, keys: Iterable[str]) -> dict[str, bytes]:
        """The payloads kept for those of ``keys`` that this store has (none when the file is unusable)."""
        wanted = list(dict.fromkeys(keys))

        def read(db: sqlite3.Connection) -> dict[str, bytes]:
            found: dict[str, bytes] = {}
            for first in range(0, len(wanted), _KEYS_PER_QUERY):
                batch = wanted[first : first + _KEYS_PER_QUERY]
                marks = ",".join("?" * len(batch))
                query = f"SELECT key, payload FROM vectors WHERE model = ? AND key IN ({marks})"
                found.update(db.execute(query, (model, *batch)))
            return found

        return self._run(read, {}, create=False, write=False, strict=False) if wanted else {}

    def put(self, model: str, session_id: str, entries: Mapping[str, bytes | None]) -> None:
        """Keep new payloads and record that ``session_id`` uses every key of ``entries``, in one transaction.

        A payload already kept is left as it is (content keys: it is the same vector), so
        None stands for a key known to be kept, whose use alone is recorded.
        """

        def write(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT OR IGNORE INTO vectors (model, key, payload) VALUES (?, ?, ?)",
                [(model, key, payload) for key, payload in entries.items() if payload is not None],
            )
            db.executemany(
                "INSERT OR IGNORE INTO uses (session_id, model, key) VALUES (?, ?, ?)",
                [(session_id, model, key) for key in entries],
            )

        if entries:
            self._run(write, None, create=True, write=True, strict=False)

    def forget_session(self, session_id: str) -> None:
        """Remove the session's uses, of every model, and every vector that no other session uses.

        A delete must not pass silently over vectors it could not remove: a file locked
        too long raises ``StoreBusy``, so the session is still there to delete again. A
        damaged file is replaced, which removes every vector.
        """

        def forget(db: sqlite3.Connection) -> None:
            used = db.execute("SELECT model, key FROM uses WHERE session_id = ?", (session_id,)).fetchall()
            db.execute("DELETE FROM uses WHERE session_id = ?", (session_id,))
            db.executemany(
                "DELETE FROM vectors WHERE model = ? AND key = ? AND NOT EXISTS "
                "(SELECT 1 FROM uses WHERE uses.model = vectors.model AND uses.key = vectors.key)",
                used,
            )

        self._run(forget, None, create=False, write=True, strict=True)
        # The journal still holds earlier images of those pages: copy it into the file
        # (whose freed pages secure_delete zeroed) and empty it. Readers of other
        # kernels may hold it back; their next write's checkpoint completes it.
        self._run(lambda db: db.execute("PRAGMA wal_checkpoint(TRUNCATE)"), None, create=False, write=False, strict=False)

    def _run(
        self,
        work: Callable[[sqlite3.Connection], Result],
        default: Result,
        create: bool,
        write: bool,
        strict: bool,
    ) -> Result:
        """``work`` on this thread's connection (in a write transaction if ``write``); ``default`` when it fails.

        Without ``create``, a store that has no file yet has nothing to read or forget.
        With ``strict``, failures other than a damaged file are raised.
        """
        try:
            db = self._connection(create)
            if db is None:
                return default
            if not write:
                return work(db)
            db.execute("BEGIN IMMEDIATE")  # take the write lock now: a read lock upgraded later can deadlock
            try:
                result = work(db)
                db.execute("COMMIT")
            except BaseException:
                db.rollback()
                raise
            return result
        except sqlite3.Error as error:
            self._drop_connection(replace=_code(error) in _DAMAGED)
            if strict and _code(error) in _BUSY:
                raise StoreBusy(self.path, self.timeout) from error
            if strict and _code(error) not in _DAMAGED:
                raise
            return default
        except OSError:
            if strict:
                raise
            return default

    def _connection(self, create: bool) -> sqlite3.Connection | None:
        """This thread's connection, opened (and the file made, if ``create``) on first use.

        A connection is not carried into a forked child: SQLite forbids using it there.
        """
        held = getattr(self._local, "held", None)
        if held is not None and held[0] == os.getpid():
            return held[1]
        self._remove_legacy()
        if not create and not os.path.exists(self.path):
            return None
        inode = self._private_file()
        try:
            db = self._connect()
        except sqlite3.DatabaseError as error:
            if _code(error) not in _DAMAGED:
                raise
            self._replace(inode)
            inode = self._private_file()
            db = self._connect()
        self._local.held = (os.getpid(), db, inode)
        return db

    def _private_file(self) -> int:
        """Make the file 0600 before SQLite opens it (SQLite would make it 0644; its journals copy its mode); its inode."""
        ensure_private_dir(self.directory)
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            os.fchmod(descriptor, FILE_MODE)
            return os.fstat(descriptor).st_ino
        finally:
            os.close(descriptor)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        try:
            db.execute("PRAGMA secure_delete = ON")
            self._set_wal(db)
            db.execute("PRAGMA synchronous = NORMAL")  # no fsync per commit: a cache, rebuilt when lost
            db.executescript(_SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    def _set_wal(self, db: sqlite3.Connection) -> None:
        """Switch to the WAL journal, waiting as the busy timeout would: this one statement answers "locked" at once.

        Two processes opening a new file together would otherwise see one of them fail,
        and skip its write.
        """
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                db.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as error:
                if _code(error) not in _BUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _inode(self) -> int | None:
        try:
            return os.stat(self.path).st_ino
        except FileNotFoundError:
            return None

    def _drop_connection(self, replace: bool) -> None:
        """Close this thread's connection after an error; if the file was damaged, replace it on the next open."""
        held = getattr(self._local, "held", None)
        self._local.held = None
        if held is None:
            return
        held[1].close()
        if replace:
            self._replace(held[2])

    def _replace(self, inode: int) -> None:
        """Remove the damaged file (and its journals) unless another thread or process already replaced it."""
        with self._replacing:
            if self._inode() != inode:
                return
            for suffix in ("", "-wal", "-shm"):
                remove_file(self.path + suffix)

    def _remove_legacy(self) -> None:
        """Remove what earlier versions kept, a file per session (``<model>/<session id>.bin``), so none outlives a delete."""
        if self._legacy_removed:
            return
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            entries = []
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
        self._legacy_removed = True


def _code(error: sqlite3.Error) -> int | None:
    """SQLite's own error code; None for errors of the Python module itself (e.g. a closed connection)."""
    return getattr(error, "sqlite_errorcode", None)
