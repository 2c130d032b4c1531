"""Looking after stores rather than talking in them: ``oblix doctor``'s diagnosis, the database's schema and users, importing files.

``OblixClient`` keeps a thin method for each, so that front ends still call only the
client; none of this runs on a turn's path.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

from .errors import BadArguments, OblixError, StoreUnavailable
from .models.gateway import model_rows
from .store.base import SessionStore, Spooling
from .store.dsn import check, describe, is_connection_string


def diagnose(
    store: SessionStore, model: str | None, fallback_models: str | Sequence[str] | None, semantic: bool | None
) -> list[tuple[str, str]]:
    """What ``oblix doctor`` reports of the store and the models: rows of (what, state), never a key's value."""
    rows = [("store", store.location)]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # unreadable files are listed below instead
            readable = store.list_sessions(limit=None)
    except StoreUnavailable as error:
        rows.append(("store state", f"not answering: {error}"))
    else:
        rows += [("store state", _store_state(store)), ("sessions", str(len(readable)))]
        rows += [("unreadable", f"{problem.path} ({problem.reason})") for problem in store.problems] or [("unreadable", "none")]
    if isinstance(store, Spooling):  # read from the spool's files: true whether or not the database answers
        spool = store.spool
        waiting = len(spool.pending())
        rows.append(("saved locally", f"{waiting} message(s) waiting for the database" if waiting else "none waiting"))
        refused = spool.refused()
        if refused:
            rows.append(("saved locally, refused", f"{len(refused)} message(s) the database will not take, kept in {spool.directory}"))
    return rows + [("relevance", _relevance_state(semantic))] + model_rows(model, fallback_models)


def _store_state(store: SessionStore) -> str:
    """A store that just answered: files, or a database whose schema is the one this code reads (it opens no other)."""
    from .store.sessions import SessionManager

    if isinstance(store, SessionManager):
        return "answers (session files)"
    from .store.pg_schema import LATEST

    return f"answers (PostgreSQL, schema version {LATEST}, up to date)"


def _relevance_state(semantic: bool | None) -> str:
    """How the selector judges relevance here: by words and meaning, or by words alone and why."""
    from .context.embedder import load_embedder, unavailable_reason

    if semantic is False:
        return "words only (semantic=False)"
    embedder = load_embedder()
    return f"words and meaning ({embedder.name})" if embedder is not None else f"words only: {unavailable_reason()}"


def describe_store(location: str | os.PathLike[str] | None = None) -> str:
    """Where ``OblixClient(store=location)`` keeps sessions, for people, without opening it: a database without its password."""
    location = os.fspath(location) if location is not None else os.environ.get("OBLIX_STORE") or None
    if is_connection_string(location):
        return describe(location)
    from .store.files import default_base_dir

    return os.path.abspath(location or default_base_dir())


def waiting_on_this_machine() -> list[tuple[str, str, int, int]]:
    """(database, user, messages waiting, refused) for each local spool that holds any: read from files, so it answers while the database is away."""
    from .store.spool import waiting_on_this_machine as waiting

    return waiting()


def upgrade_database(dsn: str) -> int:
    """Bring the database's schema up to date (as a PostgreSQL superuser); returns how many migrations ran."""
    from .store.pg_schema import upgrade

    check(dsn)  # before libpq sees a string it would misread, or quote in its errors
    return upgrade(dsn)


def database_status(dsn: str) -> tuple[int, int]:
    """(the database's schema version, the newest this oblix_jupyter knows)."""
    from .store.pg_schema import status

    check(dsn)
    return status(dsn)


def add_database_user(dsn: str, name: str) -> None:
    """Make login role ``name`` (created without a password if absent) a user of the store."""
    from .store.pg_schema import add_user

    check(dsn)
    add_user(dsn, name)


def import_files(target: SessionStore, directory: str | os.PathLike[str] | None = None) -> dict[str, int]:
    """Copy a file store (default ``~/.oblix/sessions``) into ``target``, keeping ids; returns counts.

    Safe to run again: a session already there is skipped, and a binding is copied only
    where ``target`` has none for that notebook, so nothing is copied twice and nothing
    newer is overwritten. A session that cannot be stored (an id another user of the
    database holds, a malformed file) is warned about and counted as ``failed``.
    """
    from .store.files import default_base_dir
    from .store.sessions import SessionManager

    source_dir = os.path.abspath(os.fspath(directory) if directory is not None else default_base_dir())
    if not os.path.isdir(source_dir):
        raise BadArguments(f"There is no session directory {source_dir} to import.")
    source = SessionManager(source_dir)
    counts = {"copied": 0, "skipped": 0, "failed": 0, "bindings": 0}
    for session in source.iter_sessions():
        if target.session_version(session["id"]) is not None:  # already here: one row read, not the messages
            counts["skipped"] += 1
            continue
        try:
            target.add_session(session, new_id=False, kept_attachments=source.attachment_bytes(session))
        except OblixError as error:
            warnings.warn(f"Session {session['id']} was not copied: {error}", RuntimeWarning, stacklevel=3)
            counts["failed"] += 1
            continue
        counts["copied"] += 1
    for notebook, session_id in source.bindings().items():
        if target.bound_session(notebook) is None and target.session_version(session_id) is not None:
            target.bind(notebook, session_id)
            counts["bindings"] += 1
    counts["unreadable"] = len(source.problems)
    return counts
