"""The store's written contract: what the client may ask of any store, the logic every store shares, and the optional abilities.

``SessionStore`` is the whole of it: a new store implements its abstract methods (a
backend that leaves one out cannot be instantiated) and inherits the rest, which is
written here once for every store: the SDK's create, import, export and copy on top of
``_store_new``, ``get_session``, the prune cut-off, and the checks in front of the vector
cache. What only some stores can do is a named ability of its own (``Sharing``,
``ChangeFeed``, ``Spooling``), which a store declares by inheriting it and the client
asks for with ``isinstance``.
"""

from __future__ import annotations

import abc
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from datetime import timedelta
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ..errors import AttachmentNotFound, BadArguments, CorruptSession, NewerSchema, SessionNotFound
from .attachment_data import attachments_of, take_attachment_data, with_attachment_data
from .files import atomic_write_bytes, read_import_file
from .shape import (
    change_time,
    check_session_shape,
    format_time,
    imported_session,
    new_session,
    parse_time,
    validate_session_id,
)

if TYPE_CHECKING:
    from .spool import Spool

ATTACHMENT_ID = re.compile(r"[0-9a-f]{64}")  # the SHA-256 of an attachment's bytes: never a path, never a pattern
MAX_ATTACHMENT_BYTES = 20 * 1024 * 1024  # the kernel keeps at most this much of recent images in all


class SessionStore(abc.ABC):
    """Sessions in the Oblix SDK's shape, with its method names and argument order, wherever they are kept."""

    def __init__(self) -> None:
        # Sessions that could not be read by the last listing, for ``oblix doctor``; a database has none.
        self.problems: list[CorruptSession | NewerSchema] = []

    # -- what each store writes for itself ------------------------------------------------

    @property
    @abc.abstractmethod
    def location(self) -> str:
        """Where the sessions are, for people (``oblix doctor``, error messages), never with a password."""

    @abc.abstractmethod
    def _store_new(self, session: dict[str, Any], attachments: Mapping[str, bytes] = MappingProxyType({})) -> str:
        """Store a complete, checked session under its own id, with the bytes its messages name (``attachments``, by their
        checked SHA-256), all or nothing (``ImportFormatError`` if that id is taken); return the id.
        """

    @abc.abstractmethod
    def load_session(self, session_id: str) -> dict[str, Any] | None:
        """The whole session as a plain dict, or None when no such session exists (as in the SDK)."""

    @abc.abstractmethod
    def save_message(self, session_id: str, message: Any, role: str = "user", **fields: Any) -> dict[str, Any]:
        """Append a message and return it as stored, numbered ``msg_<n>`` (a truthy dict, where the SDK returned True).

        Its texts are redacted first (``shape.message_parts``): not every message comes from a turn.
        """

    @abc.abstractmethod
    def update_session(self, session_id: str, **fields: Any) -> dict[str, Any]:
        """Change ``title``, ``context``, ``model``, ``metadata`` or other extra fields, redacted (``shape.check_update``); returns the session."""

    @abc.abstractmethod
    def update_session_metadata(self, session_id: str, metadata: dict[str, Any]) -> bool:
        """Merge ``metadata``, redacted (``shape.redacted_context``), into the session's metadata (the SDK's call)."""

    @abc.abstractmethod
    def list_sessions(self, limit: int | None = 50) -> list[dict[str, Any]]:
        """Listing rows (``shape.listing_row``) of the most recently updated sessions, newest first; None: all."""

    @abc.abstractmethod
    def search_sessions(self, query: str, limit: int = 50) -> list[dict[str, Any]]:
        """Listing rows of the sessions whose title or messages match ``query``."""

    @abc.abstractmethod
    def delete_session(self, session_id: str) -> bool:
        """Remove a session and every trace of it (bindings, vector uses); False when there was none."""

    @abc.abstractmethod
    def session_version(self, session_id: str) -> Any:
        """A value that changes whenever the session is written (None while it does not exist): cheap to poll."""

    @abc.abstractmethod
    def resolve_id(self, id_or_prefix: str) -> str:
        """Turn a full id or a unique prefix of one into the full id (``shape.resolve_session_id``)."""

    @abc.abstractmethod
    def bind(self, key: str, session_id: str) -> None:
        """Bind a notebook (any stable identifier of it, usually its path) to a session."""

    @abc.abstractmethod
    def unbind(self, key: str) -> None:
        """Forget the notebook's binding, if it has one."""

    @abc.abstractmethod
    def bound_session(self, key: str) -> str | None:
        """The session bound to ``key``, or None if there is none or it can no longer be read."""

    @abc.abstractmethod
    def bindings(self) -> dict[str, str]:
        """Every notebook key and the session bound to it."""

    @abc.abstractmethod
    def _prune(self, cutoff: str, dry_run: bool) -> list[str]:
        """Delete (unless ``dry_run``) the sessions last updated before ``cutoff`` (a time as ``updated_at`` holds it); their ids."""

    @abc.abstractmethod
    def _read_vectors(self, model: str, keys: list[str]) -> dict[str, bytes]:
        """The kept vectors of those of ``keys`` (distinct, at least one) that any session stored; {} when the cache fails."""

    @abc.abstractmethod
    def _write_vectors(self, model: str, session_id: str, entries: Mapping[str, bytes | None]) -> None:
        """Keep ``entries`` (at least one; None: kept already) and that ``session_id`` (checked) uses them."""

    @abc.abstractmethod
    def _write_attachment(self, session_id: str, attachment_id: str, data: bytes) -> None:
        """Keep ``data`` under its id for the session (both checked), unless kept already; gone with the session."""

    @abc.abstractmethod
    def _read_attachment(self, session_id: str, attachment_id: str) -> bytes | None:
        """The bytes kept under the id (checked) for the session, if this user may read it; None otherwise."""

    # -- written once, for every store ----------------------------------------------------

    def create_session(
        self,
        initial_context: dict[str, Any] | None = None,
        title: str | None = None,
        metadata: dict[str, Any] | None = None,
        model: str | None = None,
    ) -> str:
        """Create an empty session and return its id (a UUID4 string)."""
        return self._store_new(new_session(initial_context, title, metadata, model))

    def add_session(self, data: dict[str, Any], new_id: bool = True, kept_attachments: Mapping[str, bytes] | None = None) -> str:
        """Store a complete session dict (from an import); timestamps are normalised to ours.

        Every attachment its messages name comes with its bytes: the entry's base64
        ``"data"``, as an exported file carries them, or ``kept_attachments`` by id (a copy
        within a store). All are checked before anything is stored (``attachment_data``),
        and stored with the session in one step (``_store_new``): even a process killed
        halfway leaves no stored message naming bytes that are not there.
        """
        session = imported_session(data, new_id)
        attachments = take_attachment_data(session, "The session to import", MAX_ATTACHMENT_BYTES, kept_attachments)
        return self._store_new(session, attachments)

    def export_session(self, session_id: str, export_path: str | os.PathLike[str]) -> bool:
        """Write the session as one JSON object in the seed's shape, each attachment's bytes in its entry as base64 ``"data"``."""
        session = with_attachment_data(self.get_session(session_id), lambda attachment: self.read_attachment(session_id, attachment))
        export_path = os.fspath(export_path)
        os.makedirs(os.path.dirname(os.path.abspath(export_path)), exist_ok=True)
        atomic_write_bytes(export_path, json.dumps(session, ensure_ascii=False, indent=2).encode("utf-8"))
        return True

    def import_session(self, import_path: str | os.PathLike[str], new_id: bool = True) -> str:
        """Read a session JSON file (ours or the original SDK's) and store it; returns its id."""
        import_path = os.fspath(import_path)
        return self.add_session(check_session_shape(read_import_file(import_path), import_path), new_id=new_id)

    def copy_session(self, session_id: str, new_title: str | None = None) -> str:
        """Duplicate a session under a new id, e.g. to branch a conversation."""
        session = self.get_session(session_id)
        session["title"] = new_title or f"Copy of {session['title']}"
        session["created_at"] = session["updated_at"] = change_time()
        return self.add_session(session, new_id=True, kept_attachments=self.attachment_bytes(session))

    def attachment_bytes(self, session: Mapping[str, Any]) -> dict[str, bytes]:
        """The bytes of every image the session's messages carry, by id: what ``add_session`` needs to copy it into a store."""
        return {entry["id"]: self.read_attachment(session["id"], entry["id"]) for message in session["messages"] for entry in attachments_of(message)}

    def get_session(self, session_id: str) -> dict[str, Any]:
        """Like ``load_session`` but a missing session is an error, for callers that need one."""
        session = self.load_session(session_id)
        if session is None:
            raise SessionNotFound(session_id, self.location)
        return session

    def prepare_read(self, session_id: str) -> None:
        """Do ahead what the next read of the session would do, e.g. while the user reads an answer; by default nothing."""

    def prune(self, older_than: timedelta, dry_run: bool = False) -> list[str]:
        """Delete sessions not updated within ``older_than``; returns their ids.

        Measured back from a change stamp rather than the clock: stamps run ahead of the
        clock when changes come faster than one a millisecond (``shape.change_time``), and
        a session changed just now must count as changed before "now".
        """
        return self._prune(format_time(parse_time(change_time()) - older_than), dry_run)

    def save_attachment(self, session_id: str, data: bytes) -> str:
        """Keep an attachment's bytes (an image a user's message carries) with the session; its id, the SHA-256 of the bytes.

        Saved before the message that names it, so no message ever names bytes that are
        not there; ``delete_session`` removes them with the session.
        """
        validate_session_id(session_id)
        if not isinstance(data, bytes) or not data or len(data) > MAX_ATTACHMENT_BYTES:
            raise BadArguments(f"An attachment is 1 to {MAX_ATTACHMENT_BYTES:,} bytes.")
        attachment_id = hashlib.sha256(data).hexdigest()
        self._write_attachment(session_id, attachment_id, data)
        return attachment_id

    def read_attachment(self, session_id: str, attachment_id: str) -> bytes:
        """The bytes of an attachment of the session; ``AttachmentNotFound`` for an id it has not (or that is not one).

        Bytes that no longer match their id (a damaged file) are not returned as if they did.
        """
        validate_session_id(session_id)
        if not isinstance(attachment_id, str) or not ATTACHMENT_ID.fullmatch(attachment_id):
            raise AttachmentNotFound(session_id, str(attachment_id))
        data = self._read_attachment(session_id, attachment_id)
        if data is None or hashlib.sha256(data).hexdigest() != attachment_id:
            raise AttachmentNotFound(session_id, attachment_id)
        return data

    def read_vectors(self, model: str, keys: Iterable[str]) -> dict[str, bytes]:
        """The vectors by embedding ``model`` kept under those of the content ``keys`` that any session stored.

        A cache: when it cannot be read it finds nothing, and the caller embeds again.
        """
        wanted = list(dict.fromkeys(keys))
        return self._read_vectors(model, wanted) if wanted else {}

    def write_vectors(self, model: str, session_id: str, entries: Mapping[str, bytes | None]) -> None:
        """Keep vectors by content key, and that the session uses them (None: kept already), until no session does.

        ``delete_session`` forgets the session's uses; the vectors no session uses go with them.
        """
        validate_session_id(session_id)
        if entries:
            self._write_vectors(model, session_id, entries)


# -- abilities only some stores have: the client asks with isinstance ---------------------


class Sharing(abc.ABC):
    """A store with other users, who may be given a session to read, or to read and add to.

    Only such a store has sessions that this user may read but not write, so
    ``can_write`` belongs here: a store without sharing can write every session it reads.
    """

    @abc.abstractmethod
    def share(self, session_id: str, user: str, write: bool = False) -> None:
        """Let ``user`` read the session (and, with ``write``, add messages to it); only its owner may."""

    @abc.abstractmethod
    def unshare(self, session_id: str, user: str) -> None:
        """Take the session back from ``user`` (nothing if it was not shared with them); only its owner may."""

    @abc.abstractmethod
    def shares(self, session_id: str) -> list[dict[str, Any]]:
        """Who else may read the session, and who may write: ``[{"user", "write"}]``."""

    @abc.abstractmethod
    def can_write(self, session_id: str) -> bool:
        """Whether this user may add messages to a session read here."""


class ChangeFeed(abc.ABC):
    """A store that announces appends as they happen, so a follower need not poll ``session_version``."""

    @abc.abstractmethod
    def wait_for_changes(self, session_ids: Iterable[str], timeout: float = 10.0) -> list[tuple[str, str]]:
        """(session id, message id) of messages appended to ``session_ids``, waiting up to ``timeout`` s for one."""


class Spooling(abc.ABC):
    """A store that keeps on this machine, in ``spool``, the messages it could not write, and writes them later."""

    spool: Spool

    @abc.abstractmethod
    def flush_spool(self, session_id: str | None = None) -> int:
        """Write the messages kept while the store could not take them (``session_id``'s, or all); how many were."""
