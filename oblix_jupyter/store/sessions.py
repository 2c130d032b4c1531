"""The file store: ``base.SessionStore`` as one TinyDB file per session, in the Oblix SDK's data shape.

Layout of ``base_dir`` (default ``~/.oblix/sessions``, or ``$OBLIX_HOME/sessions``)::

    <id>.json                  the session (TinyDB, one document in the seed's shape)
    .index/<stamp>.<id>.json   a small header per session: title, counts, model
    .locks/<id>.lock           per-session write locks
    .bindings.json             notebook path -> session id
    .vectors/vectors.sqlite3   passage vectors of messages by content, shared by the sessions that hold them
    .attachments/<id>/<sha256> the bytes of the images the session's messages carry, one private file each

``SessionManager`` owns all of it: the headers (``index``), the bindings (``bindings``)
and the vectors (``vectors``) are its caches and tables, and deleting a session removes every one.
What a session document is, and how it is checked, is ``shape``.
"""

from __future__ import annotations

import copy
import os
import shutil
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any

from tinydb import TinyDB

from ..errors import CorruptSession, ImportFormatError, NewerSchema, SessionNotFound
from .base import SessionStore
from .bindings import Bindings
from .files import DIR_MODE, atomic_write_bytes, default_base_dir, ensure_private_dir, read_bytes, remove_file
from .index import ListingIndex
from .migrations import readable, upgrade
from .shape import (
    UUID,
    change_time,
    check_update,
    mentions,
    message_parts,
    next_message_id,
    now_iso,
    redacted_context,
    resolve_session_id,
    stamp,
    summarize,
    validate_session_id,
)
from .storage import LockedAtomicStorage
from .vector_file import VectorFile
from .written import ParsedFiles

_DOC_ID = 1  # each session file holds exactly one TinyDB document


class SessionManager(SessionStore):
    """Sessions on disk, with the Oblix SDK's method names and argument order."""

    def __init__(self, base_dir: str | os.PathLike[str] | None = None, lock_timeout: float = 30.0) -> None:
        super().__init__()
        self.base_dir = os.path.abspath(os.fspath(base_dir) if base_dir is not None else default_base_dir())
        self.lock_timeout = lock_timeout
        self._locks_dir = os.path.join(self.base_dir, ".locks")
        self._attachments_dir = os.path.join(self.base_dir, ".attachments")
        self._index = ListingIndex(os.path.join(self.base_dir, ".index"))
        self._parsed = ParsedFiles()
        for directory in (self.base_dir, self._index.directory, self._locks_dir):
            ensure_private_dir(directory)
        os.chmod(self.base_dir, DIR_MODE)
        self._bindings = Bindings(self.base_dir, self._locks_dir, lock_timeout, self._report)
        self._vectors = VectorFile(os.path.join(self.base_dir, ".vectors"), lock_timeout)

    # -- paths and transactions -------------------------------------------------

    def session_path(self, session_id: str) -> str:
        return os.path.join(self.base_dir, f"{validate_session_id(session_id)}.json")

    @property
    def location(self) -> str:
        """Where the sessions are, for people (``oblix doctor``)."""
        return self.base_dir

    def session_version(self, session_id: str) -> Any:
        """A value that changes whenever the session is written (None while it does not exist): cheap to poll."""
        try:
            stat = os.stat(self.session_path(session_id))
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size)

    @contextmanager
    def _transaction(self, session_id: str) -> Iterator[TinyDB]:
        path = self.session_path(session_id)
        lock = os.path.join(self._locks_dir, f"{session_id}.lock")
        with TinyDB(path, storage=LockedAtomicStorage, lock_path=lock, lock_timeout=self.lock_timeout, parsed=self._parsed) as db:
            yield db

    def _modify(self, session_id: str, change: Callable[[dict[str, Any]], Any], touch: bool = True) -> Any:
        """Apply ``change`` to the stored session under its lock; return what ``change`` returned.

        ``change`` may append messages but never alters a stored one in place: the
        storage re-encodes only appended messages (``written.dump_tables``).
        """
        with self._transaction(session_id) as db:
            current = self._document(db, session_id)
            if current is None:
                raise SessionNotFound(session_id, self.base_dir)
            old_stamp = stamp(current["updated_at"])
            result: list[Any] = []

            def apply(document: dict[str, Any]) -> None:
                upgrade(document)  # an older file is written back in the current shape
                result.append(change(document))
                if touch:
                    document["updated_at"] = max(change_time(), document["updated_at"])

            db.update(apply, doc_ids=[_DOC_ID])
            self._write_header(self._document(db, session_id), old_stamp)
        return result[0]

    def _document(self, db: TinyDB, session_id: str) -> dict[str, Any] | None:
        path = self.session_path(session_id)
        if not os.path.exists(path):
            return None
        document = db.get(doc_id=_DOC_ID)
        if document is None or not isinstance(document.get("messages"), list):
            raise CorruptSession(path, "not an oblix session (no session document)")
        return readable(document, path)

    # -- the listing index ----------------------------------------------------------

    def _file_state(self, session_id: str) -> list[int] | None:
        try:
            stat = os.stat(self.session_path(session_id))
        except OSError:
            return None
        return [stat.st_mtime_ns, stat.st_size]

    def _write_header(self, session: dict[str, Any], old_stamp: str | None = None) -> None:
        self._index.write(session, self._file_state(session["id"]) or [0, 0], old_stamp)

    def _session_ids_on_disk(self) -> set[str]:
        return {name[:36] for name in os.listdir(self.base_dir) if len(name) == 41 and name.endswith(".json")}

    def _rebuild_header(self, session_id: str) -> dict[str, Any] | None:
        """Read the session file and write its header; record it as a problem if unreadable."""
        try:
            session = self.load_session(session_id)
        except (CorruptSession, NewerSchema) as problem:
            self._report(problem)
            return None
        if session is None:
            return None
        with self._transaction(session_id):  # the header must describe a settled file
            self._write_header(session)
        return summarize(session)

    def _report(self, problem: CorruptSession | NewerSchema) -> None:
        if all(p.path != problem.path for p in self.problems):
            self.problems.append(problem)
        warnings.warn(str(problem), RuntimeWarning, stacklevel=3)

    def _read_header(self, stamp_text: str, session_id: str) -> dict[str, Any] | None:
        """The header if it still describes the session file, else one rebuilt from the file."""
        header = self._index.read(stamp_text, session_id, self._file_state(session_id))
        return header if header is not None else self._rebuild_header(session_id)

    def _headers(self) -> list[tuple[str, str]]:
        """(stamp, id) of every session, newest first, after reconciling headers with session files."""
        self.problems = []
        ordered, missing = self._index.ordered(self._session_ids_on_disk())
        for session_id in missing:
            summary = self._rebuild_header(session_id)
            if summary is not None:
                ordered.append((stamp(summary["updated_at"]), session_id))
        if missing:
            ordered.sort(reverse=True)
        return ordered

    # -- the Oblix SDK's SessionManager API ---------------------------------------

    def _store_new(self, session: dict[str, Any], attachments: Mapping[str, bytes] = MappingProxyType({})) -> str:
        """The bytes first, then the session file that names them: killed between the two, the store holds bytes under
        an id no session has (nobody can reach them), never a message naming bytes that are not there.
        """
        folder = os.path.join(self._attachments_dir, session["id"])
        try:
            with self._transaction(session["id"]) as db:
                if os.path.exists(self.session_path(session["id"])):
                    raise ImportFormatError(f"A session with id {session['id']} already exists.")
                try:
                    for attachment_id, data in attachments.items():
                        ensure_private_dir(folder)
                        atomic_write_bytes(os.path.join(folder, attachment_id), data)
                    db.insert(session)
                except BaseException:
                    shutil.rmtree(folder, ignore_errors=True)  # nothing names them: a failure to remove them loses nothing
                    raise
                self._write_header(session)
        except BaseException:
            if not os.path.exists(self.session_path(session["id"])):  # nor a lock file for an id no session has
                remove_file(os.path.join(self._locks_dir, f"{session['id']}.lock"))
            raise
        return session["id"]

    def save_message(self, session_id: str, message: Any, role: str = "user", **fields: Any) -> dict[str, Any]:
        """Append a message and return it as stored (a truthy dict, where the SDK returned True).

        ``message`` may be text or a dict with ``content`` (as the SDK accepted); extra
        ``fields`` (``model``, ``status``, ``usage``...) are stored on the message.
        """
        content, extra = message_parts(message, role, fields)

        def append(session: dict[str, Any]) -> dict[str, Any]:
            stored = {"id": next_message_id(session["messages"]), "role": role, "content": content, "timestamp": now_iso(), **extra}
            session["messages"].append(stored)
            return copy.deepcopy(stored)  # the stored dict stays with the transaction's data

        return self._modify(session_id, append)

    def load_session(self, session_id: str) -> dict[str, Any] | None:
        """The whole session as a plain dict, or None when no such session exists (as in the SDK)."""
        path = self.session_path(session_id)
        db = TinyDB(path, storage=LockedAtomicStorage, parsed=self._parsed)  # the data a write just stored, if unchanged
        try:
            document = self._document(db, session_id)
        finally:
            db.close()
        return None if document is None else dict(document)

    def prepare_read(self, session_id: str) -> None:
        """Parse the session now for its next read, e.g. while the user reads an answer.

        The next ``load_session`` then returns without parsing, and the next append still
        finds the copy its own write kept. Does nothing if the file changed since this
        store last wrote it, or cannot be read (its next read reports that).
        """
        try:
            self._parsed.prepare(self.session_path(session_id))
        except (FileNotFoundError, CorruptSession):
            pass

    def list_sessions(self, limit: int | None = 50) -> list[dict[str, Any]]:
        """Summaries of the most recently updated sessions, newest first.

        Unreadable session files are left out, warned about, and kept in ``self.problems``.
        """
        listed: list[dict[str, Any]] = []
        for stamp_text, session_id in self._headers():
            if limit is not None and len(listed) >= limit:
                break
            summary = self._read_header(stamp_text, session_id)
            if summary is not None:
                listed.append(summary)
        return listed

    def iter_sessions(self) -> Iterator[dict[str, Any]]:
        """Every readable session, newest first (for search and export of everything)."""
        for _, session_id in self._headers():
            try:
                session = self.load_session(session_id)
            except (CorruptSession, NewerSchema) as problem:
                self._report(problem)
                continue
            if session is not None:
                yield session

    def delete_session(self, session_id: str) -> bool:
        """Remove a session and every trace of it: headers, vectors, bindings, lock; False when there was none.

        The traces go first and the session file last, so an interrupted delete leaves a
        session that can be deleted again rather than traces that nothing lists. Traces
        of a session that is already gone (a delete interrupted earlier) are removed too.
        """
        path = self.session_path(session_id)
        with self._transaction(session_id):
            existed = os.path.exists(path)
            self._bindings.unbind_session(session_id)
            self._vectors.forget_session(session_id)
            self._index.forget(session_id)
            try:  # a failure here must stop the delete while the session file still lists the bytes, as for vectors
                shutil.rmtree(os.path.join(self._attachments_dir, session_id))
            except (FileNotFoundError, NotADirectoryError):  # no folder of this session's bytes: nothing kept to remove
                pass
            remove_file(path)
        remove_file(os.path.join(self._locks_dir, f"{session_id}.lock"))
        return existed

    def _read_vectors(self, model: str, keys: list[str]) -> dict[str, bytes]:
        return self._vectors.get(model, keys)

    def _write_attachment(self, session_id: str, attachment_id: str, data: bytes) -> None:
        """Under the session's lock, so that a delete under way cannot leave the file behind it."""
        folder = os.path.join(self._attachments_dir, session_id)
        if not os.path.exists(self.session_path(session_id)):  # asked first too, so that no lock file is left for a stranger id
            raise SessionNotFound(session_id, self.base_dir)
        with self._transaction(session_id):
            if not os.path.exists(self.session_path(session_id)):
                raise SessionNotFound(session_id, self.base_dir)
            if not os.path.exists(os.path.join(folder, attachment_id)):
                ensure_private_dir(folder)
                atomic_write_bytes(os.path.join(folder, attachment_id), data)

    def _read_attachment(self, session_id: str, attachment_id: str) -> bytes | None:
        try:
            return read_bytes(os.path.join(self._attachments_dir, session_id, attachment_id))
        except FileNotFoundError:
            return None

    def _write_vectors(self, model: str, session_id: str, entries: Mapping[str, bytes | None]) -> None:
        self._vectors.put(model, session_id, entries)

    def update_session(self, session_id: str, **fields: Any) -> dict[str, Any]:
        """Change ``title``, ``context``, ``model``, ``metadata`` or other extra fields; returns the session."""
        fields = check_update(fields)

        def patch(session: dict[str, Any]) -> dict[str, Any]:
            session.update(copy.deepcopy(fields))
            return session

        self._modify(session_id, patch)
        return self.get_session(session_id)

    def update_session_metadata(self, session_id: str, metadata: dict[str, Any]) -> bool:
        """Merge ``metadata`` into the session's metadata (the SDK's call)."""
        metadata = redacted_context(metadata)
        self._modify(session_id, lambda session: session.setdefault("metadata", {}).update(metadata))
        return True

    def search_sessions(self, query: str, limit: int = 50) -> list[dict[str, Any]]:
        """Sessions whose title or any message contains ``query`` (case-insensitive), newest first."""
        needle = query.casefold()
        found = []
        for session in self.iter_sessions():
            if mentions(session, needle):
                found.append(summarize(session))
                if len(found) >= limit:
                    break
        return found

    # -- beyond the SDK -------------------------------------------------------------

    def _prune(self, cutoff: str, dry_run: bool) -> list[str]:
        cutoff = stamp(cutoff)
        doomed = [session_id for stamp, session_id in self._headers() if stamp < cutoff]
        if not dry_run:
            for session_id in doomed:
                self.delete_session(session_id)
        return doomed

    # -- notebook bindings ----------------------------------------------------------

    def bind(self, key: str, session_id: str) -> None:
        """Bind a notebook (any stable identifier of it, usually its path) to a session."""
        self._bindings.bind(key, session_id)

    def unbind(self, key: str) -> None:
        self._bindings.unbind(key)

    def bound_session(self, key: str) -> str | None:
        """The session bound to ``key``, or None if there is none or it was deleted."""
        session_id = self._bindings.all().get(key)
        if session_id and os.path.exists(self.session_path(session_id)):
            return session_id
        return None

    def bindings(self) -> dict[str, str]:
        """Every notebook key and the session bound to it."""
        return self._bindings.all()

    def resolve_id(self, id_or_prefix: str) -> str:
        """Turn a full id or a unique prefix of one into the full id."""

        def matching(candidate: str) -> list[str]:
            if UUID.match(candidate):
                return [candidate] if os.path.exists(self.session_path(candidate)) else []
            return [sid for sid in self._session_ids_on_disk() if sid.startswith(candidate)]

        return resolve_session_id(id_or_prefix, matching, self.base_dir)

