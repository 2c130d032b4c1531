"""Messages kept on this machine while the session database cannot take them, written there in order later, once each.

A turn's answer arrives from the model whether or not the database still answers; when
it does not (or when it broke while the message was being committed, so that nobody
knows whether it arrived), the answer must not be lost. Each such message becomes one
private file (0600, in a 0700 folder beside the file store) named so that names sort
in the order the messages were saved, holding the message's idempotency key.

Any process of the user may write the spool (``flush``): it first claims the whole
folder (a file lock, which the system releases when a process dies, so a killed
flusher blocks nobody), then appends each message in order and removes its file. A
process killed between an append and the removal leaves a file whose message is
stored already: writing it again is harmless, because the database stores a key once.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import CorruptSession, NotPermitted, SessionNotFound, StoreUnavailable
from .files import FILE_MODE, atomic_write_bytes, default_base_dir, ensure_private_dir, read_json_file, remove_file

_ABOUT = "about.json"  # which database and user a folder is for, so it can be described with no connection
_CLAIM = ".claim"  # the lock file a flusher holds
_REFUSED = ".refused"  # a record the database will never take (its session gone, or no longer writable)


def spool_root() -> str:
    """The folder holding every (database, user) pair's spool of this machine account."""
    return os.path.join(os.path.dirname(default_base_dir()), "spool")


class Spool:
    """Pending messages for one database and one of its users, by session: what ``PostgresStore`` could not write.

    ``location`` names the database (without its password) and ``user`` is the role the
    store logged in as, as libpq resolved it (from the connection string, ``PGUSER``, a
    service file or the login name). Each pair has a folder of its own, so that a
    message is only ever written to the database it was meant for, as the user who
    wrote it: two database users of one machine account never flush each other's.
    """

    def __init__(self, location: str, user: str) -> None:
        self.location = location
        self.user = user
        self.directory = os.path.join(spool_root(), _folder_name(location, user))

    def add(self, session_id: str, message: dict[str, Any], key: str | None = None) -> None:
        """Keep ``message`` (role, content, timestamp and extra fields) for ``session_id``, with its idempotency ``key`` (default: a new one)."""
        ensure_private_dir(self.directory)
        about = os.path.join(self.directory, _ABOUT)
        if not os.path.exists(about):
            atomic_write_bytes(about, json.dumps({"location": self.location, "user": self.user}).encode("utf-8"))
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex}.json"
        record = {"session_id": session_id, "key": key or str(uuid.uuid4()), "message": message}
        atomic_write_bytes(os.path.join(self.directory, name), json.dumps(record, ensure_ascii=False).encode("utf-8"))

    def pending(self, session_id: str | None = None) -> list[dict[str, Any]]:
        """The kept messages, oldest first, each ``{"session_id", "key", "message", "path"}`` (only ``session_id``'s if given)."""
        records = []
        for path in self._files(".json"):
            try:
                record = read_json_file(path)
            except FileNotFoundError:
                continue  # written and removed by another process meanwhile
            except (OSError, CorruptSession):
                continue  # a damaged record stays for a person to look at (``refused`` lists it)
            if session_id is None or record.get("session_id") == session_id:
                records.append({**record, "path": path})
        return records

    def refused(self) -> list[str]:
        """Files the database would not take (their session deleted, or no longer shared for writing), and damaged ones."""
        damaged = []
        for path in self._files(".json"):
            try:
                read_json_file(path)
            except (FileNotFoundError, OSError, CorruptSession):
                damaged.append(path)
        return self._files(_REFUSED) + [path for path in damaged if os.path.exists(path)]

    def _files(self, suffix: str) -> list[str]:
        try:
            names = sorted(name for name in os.listdir(self.directory) if name.endswith(suffix) and name != _ABOUT)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return [os.path.join(self.directory, name) for name in names]

    def flush(self, write: Callable[[str, str, dict[str, Any]], Any], session_id: str | None = None, wait: float = 5.0) -> int:
        """Write the kept messages with ``write(session_id, key, message)``, oldest first; stop at the first failure.

        Returns how many were written. The folder is claimed for the whole flush (at most
        ``wait`` seconds are spent waiting for another flusher, then ``StoreUnavailable``):
        each file is read under the claim, so no two processes write one at the same time.
        Each file goes only after its message is stored, so a failure leaves the rest, still
        in order, for the next attempt. A message the database refuses for good (its
        session deleted, or shared no longer) is set aside, named ``*.refused``, rather
        than block every later one.
        """
        if not self._files(".json"):  # the usual case, and a turn's: no lock file, no claim
            return 0
        written = 0
        with self._claimed(wait):
            for record in self.pending(session_id):
                try:
                    write(record["session_id"], _key_of(record), record["message"])
                except (SessionNotFound, NotPermitted):
                    os.replace(record["path"], record["path"][: -len(".json")] + _REFUSED)
                    continue
                remove_file(record["path"])
                written += 1
        return written

    @contextmanager
    def _claimed(self, wait: float) -> Iterator[None]:
        from filelock import FileLock, Timeout  # only a process that has something to flush pays for the import

        ensure_private_dir(self.directory)
        # thread_local: threads of one process exclude each other as processes do
        lock = FileLock(os.path.join(self.directory, _CLAIM), mode=FILE_MODE, thread_local=True)
        try:
            lock.acquire(timeout=wait)
        except Timeout:
            raise StoreUnavailable(
                f"Another process has been writing this machine's saved messages to {self.location} for more than {wait:g} s."
            ) from None
        try:
            yield
        finally:
            lock.release()


def _key_of(record: dict[str, Any]) -> str:
    """A record's idempotency key; one spooled before keys existed gets the random part of its file name, as stable."""
    key = record.get("key")
    if isinstance(key, str):
        return key
    return str(uuid.UUID(os.path.basename(record["path"]).split("-")[1].split(".")[0]))


def waiting_on_this_machine() -> list[tuple[str, str, int, int]]:
    """(database, user, messages waiting, refused) for every spool of this machine account that holds any.

    Read from the files alone, so that ``oblix doctor`` can say what waits while the database is away.
    """
    found = []
    try:
        folders = sorted(os.listdir(spool_root()))
    except FileNotFoundError:
        return []
    for folder in folders:
        try:
            about = read_json_file(os.path.join(spool_root(), folder, _ABOUT))
        except (OSError, CorruptSession):
            continue
        spool = Spool(str(about.get("location")), str(about.get("user")))
        waiting, refused = len(spool.pending()), len(spool.refused())
        if waiting or refused:
            found.append((spool.location, spool.user, waiting, refused))
    return found


def _folder_name(location: str, user: str) -> str:
    """A name that differs for every (database, user) pair and says nothing of either."""
    return hashlib.sha256(json.dumps([location, user]).encode("utf-8")).hexdigest()[:16]
