"""A third store, in this process's memory, written against ``store.base.SessionStore`` alone.

It is what a newcomer adding a store would write: the abstract methods, with nothing
taken from the file or PostgreSQL stores, and every checked input and shared rule
(ids, message numbering, listing rows, timestamps, imports) from ``store.shape`` and
the base. ``test_sessions`` runs the stores' common suite on it, so the contract is
tested as the client sees it. Stores opened under one name share their sessions, as
two ``SessionManager``s of one directory do; another process sees none of them.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from oblix_jupyter.errors import ImportFormatError, SessionNotFound
from oblix_jupyter.store.base import SessionStore
from oblix_jupyter.store import shape


class _Shelf:
    """What one named store holds, behind one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sessions: dict[str, dict[str, Any]] = {}
        self.bindings: dict[str, str] = {}
        self.vectors: dict[tuple[str, str], bytes] = {}
        self.uses: dict[str, set[tuple[str, str]]] = {}
        self.attachments: dict[tuple[str, str], bytes] = {}  # (session id, attachment id) -> bytes

    def contents(self) -> dict[str, Any]:
        """A copy of everything held, to compare before and after a call."""
        with self.lock:
            held = {"sessions": self.sessions, "bindings": self.bindings, "vectors": self.vectors, "uses": self.uses}
            return copy.deepcopy({**held, "attachments": self.attachments})


_SHELVES: dict[str, _Shelf] = {}
_SHELVES_LOCK = threading.Lock()


class MemoryStore(SessionStore):
    """Sessions in a dict, under ``name``; gone with the process."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        with _SHELVES_LOCK:
            self._shelf = _SHELVES.setdefault(name, _Shelf())

    @property
    def location(self) -> str:
        return f"memory:{self.name}"

    def _held(self, session_id: str) -> dict[str, Any]:
        session = self._shelf.sessions.get(shape.validate_session_id(session_id))
        if session is None:
            raise SessionNotFound(session_id, self.location)
        return session

    def _store_new(self, session: dict[str, Any], attachments: Mapping[str, bytes] = MappingProxyType({})) -> str:
        with self._shelf.lock:
            if session["id"] in self._shelf.sessions:
                raise ImportFormatError(f"A session with id {session['id']} already exists.")
            self._shelf.sessions[session["id"]] = copy.deepcopy(session)
            for attachment_id, data in attachments.items():
                self._shelf.attachments[session["id"], attachment_id] = data
        return session["id"]

    def load_session(self, session_id: str) -> dict[str, Any] | None:
        shape.validate_session_id(session_id)
        with self._shelf.lock:
            return copy.deepcopy(self._shelf.sessions.get(session_id))

    def _change(self, session_id: str, change: Callable[[dict[str, Any]], Any]) -> Any:
        """``change`` applied to the held session under the lock, the session then marked updated; what ``change`` returned."""
        with self._shelf.lock:
            session = self._held(session_id)
            result = change(session)
            session["updated_at"] = max(shape.change_time(), session["updated_at"])
            return copy.deepcopy(result)

    def save_message(self, session_id: str, message: Any, role: str = "user", **fields: Any) -> dict[str, Any]:
        content, extra = shape.message_parts(message, role, fields)

        def append(session: dict[str, Any]) -> dict[str, Any]:
            number = shape.next_message_id(session["messages"])
            stored = {"id": number, "role": role, "content": content, "timestamp": shape.now_iso(), **extra}
            session["messages"].append(stored)
            return stored

        return self._change(session_id, append)

    def update_session(self, session_id: str, **fields: Any) -> dict[str, Any]:
        fields = copy.deepcopy(shape.check_update(fields))
        self._change(session_id, lambda session: session.update(fields))
        return self.get_session(session_id)

    def update_session_metadata(self, session_id: str, metadata: dict[str, Any]) -> bool:
        metadata = shape.redacted_context(metadata)
        self._change(session_id, lambda session: session.setdefault("metadata", {}).update(metadata))
        return True

    def _newest_first(self) -> list[dict[str, Any]]:
        with self._shelf.lock:
            return sorted(copy.deepcopy(list(self._shelf.sessions.values())), key=lambda s: s["updated_at"], reverse=True)

    def list_sessions(self, limit: int | None = 50) -> list[dict[str, Any]]:
        return [shape.summarize(session) for session in self._newest_first()[:limit]]

    def search_sessions(self, query: str, limit: int = 50) -> list[dict[str, Any]]:
        needle = query.casefold()
        return [shape.summarize(session) for session in self._newest_first() if shape.mentions(session, needle)][:limit]

    def delete_session(self, session_id: str) -> bool:
        shape.validate_session_id(session_id)
        shelf = self._shelf
        with shelf.lock:
            existed = shelf.sessions.pop(session_id, None) is not None
            shelf.attachments = {key: data for key, data in shelf.attachments.items() if key[0] != session_id}
            shelf.bindings = {key: bound for key, bound in shelf.bindings.items() if bound != session_id}
            shelf.uses.pop(session_id, None)
            used = set().union(*shelf.uses.values())
            shelf.vectors = {entry: payload for entry, payload in shelf.vectors.items() if entry in used}
        return existed

    def session_version(self, session_id: str) -> Any:
        session = self.load_session(session_id)
        return None if session is None else (session["updated_at"], len(session["messages"]))

    def resolve_id(self, id_or_prefix: str) -> str:
        def matching(candidate: str) -> list[str]:
            with self._shelf.lock:
                return [session_id for session_id in self._shelf.sessions if session_id.startswith(candidate)]

        return shape.resolve_session_id(id_or_prefix, matching, self.location)

    def bind(self, key: str, session_id: str) -> None:
        shape.validate_session_id(session_id)
        if not key:
            raise ValueError("a binding needs a non-empty notebook key")
        with self._shelf.lock:
            self._shelf.bindings[key] = session_id

    def unbind(self, key: str) -> None:
        with self._shelf.lock:
            self._shelf.bindings.pop(key, None)

    def bound_session(self, key: str) -> str | None:
        with self._shelf.lock:
            session_id = self._shelf.bindings.get(key)
            return session_id if session_id in self._shelf.sessions else None

    def bindings(self) -> dict[str, str]:
        with self._shelf.lock:
            return dict(self._shelf.bindings)

    def _prune(self, cutoff: str, dry_run: bool) -> list[str]:
        before = shape.parse_time(cutoff)
        doomed = [session["id"] for session in self._newest_first() if shape.parse_time(session["updated_at"]) < before]
        if not dry_run:
            for session_id in doomed:
                self.delete_session(session_id)
        return doomed

    def _write_attachment(self, session_id: str, attachment_id: str, data: bytes) -> None:
        with self._shelf.lock:
            self._held(session_id)
            self._shelf.attachments.setdefault((session_id, attachment_id), data)

    def _read_attachment(self, session_id: str, attachment_id: str) -> bytes | None:
        with self._shelf.lock:
            return self._shelf.attachments.get((session_id, attachment_id))

    def _read_vectors(self, model: str, keys: list[str]) -> dict[str, bytes]:
        with self._shelf.lock:
            return {key: self._shelf.vectors[model, key] for key in keys if (model, key) in self._shelf.vectors}

    def _write_vectors(self, model: str, session_id: str, entries: Mapping[str, bytes | None]) -> None:
        with self._shelf.lock:
            if session_id not in self._shelf.sessions:
                return  # the session went meanwhile: nothing to keep vectors for
            for key, payload in entries.items():
                if payload is not None:
                    self._shelf.vectors.setdefault((model, key), payload)
            self._shelf.uses.setdefault(session_id, set()).update((model, key) for key in entries)
